"""Per-row low-rank changes of the MLP output projections: several edited models in one batch.

The weight edits of ROME, MEMIT, PMET and RETS change `W_out`, the MLP output projection of some layers,
by a low-rank matrix `ΔK = leftᵀ @ right` (Meng et al., 2022, §3.1; `jaxedit.edit.delta`), so a block's
MLP output changes by `(key · leftᵀ) @ right` for its MLP key `key`. Given the factors of G edited models
and the model of every batch row, one pass over the unedited weights computes every row as its own
edited model would.

What that saves: a decoding step reads every weight once for a handful of rows, so it is bound by memory
traffic, not arithmetic (`tools/generation_batch.py`: on this project's 2-core CPU, 50 SmolLM2 tokens
for 2 prompts take 2.5-2.7 s and for 16 prompts 4.3-5.0 s). The fluency generations of an evaluation, one edited model per record, share one
call instead of one call per record. The rows equal those of each edited model up to float32 rounding
(`W k + ΔW k` against `(W + ΔW) k`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct


class RowDeltas(struct.PyTreeNode):
    """The MLP output deltas of G edited models and the model of each batch row.

    Attributes:
      layers: `[n]` int32, the layers some model edits (distinct).
      left: `[n, G, r, F]` float32 factors (zeros where a model leaves that layer alone; ranks padded
        with zero rows).
      right: `[n, G, r, D]` float32.
      rows: `[B]` int32, the model (index into G) of each batch row.
    """

    layers: jax.Array
    left: jax.Array
    right: jax.Array
    rows: jax.Array

    def at_layer(self, layer: jax.Array) -> Callable[[jax.Array], jax.Array]:
        """`key [B, T, F] -> [B, T, D]`: what each row's model adds to the MLP output at traced `layer`."""

        def change(i: int, key: jax.Array) -> jax.Array:
            left, right = self.left[i][self.rows], self.right[i][self.rows]  # [B, r, F], [B, r, D]
            return jnp.einsum("btr,brd->btd", jnp.einsum("btf,brf->btr", key, left), right).astype(key.dtype)

        def term(key: jax.Array) -> jax.Array:
            zero = jnp.zeros((*key.shape[:-1], self.right.shape[-1]), key.dtype)
            out = zero
            for i in range(self.layers.shape[0]):  # computed only at its layer (a conditional)
                out = out + jax.lax.cond(
                    layer == self.layers[i], lambda k, i=i: change(i, k), lambda k: zero, key
                )
            return out

        return term
