"""The probability of one token at many residual rows, without materialising the logits.

Causal tracing (docs/methods.md §1) reads out one number per restored run: `softmax(unembed(h))[answer]`.
Computed plainly, that writes a `[rows, V]` logit table (V ~ 50k) to memory only to reduce it to one
column and one normaliser. Here the vocabulary is streamed in blocks with a running log-sum-exp, so every
block of logits stays in cache: the same value, `exp(logit[answer] - logsumexp(logits))`, at the matmul
rate instead of the memory rate. Rows are processed in blocks too (`lax.map`), which bounds the working
set on any backend.

Shape letters as in `jaxedit.core.decoder`: B rows, D residual width, V vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxedit.core import decoder
from jaxedit.core.config import ModelConfig
from jaxedit.core.layout import Params
from jaxedit.runtime.row_blocks import map_row_blocks


def _unembedding(config: ModelConfig, params: Params) -> tuple[jax.Array, bool]:
    """The unembedding matrix and whether it is stored `[V, D]` (tied embeddings) or `[D, V]`."""
    if config.tie_embeddings:
        return params["embed"]["tokens"], True
    return params["unembed"]["kernel"], False


def _block_logits(
    config: ModelConfig, params: Params, h: jax.Array, start: jax.Array | int, size: int
) -> jax.Array:
    """Float32 logits `[B, size]` of vocabulary entries `start .. start + size - 1` for normed rows `h`."""
    matrix, rows_first = _unembedding(config, params)
    if rows_first:
        block = jax.lax.dynamic_slice_in_dim(matrix, start, size, axis=0)  # [size, D]
        logits = jnp.einsum("bd,vd->bv", h, block, preferred_element_type=jnp.float32)
    else:
        block = jax.lax.dynamic_slice_in_dim(matrix, start, size, axis=1)  # [D, size]
        logits = jnp.einsum("bd,dv->bv", h, block, preferred_element_type=jnp.float32)
    if "unembed" in params and "bias" in params["unembed"]:
        bias = jax.lax.dynamic_slice_in_dim(params["unembed"]["bias"], start, size)
        logits = logits + bias.astype(jnp.float32)
    return logits


def token_probability(
    config: ModelConfig,
    params: Params,
    x: jax.Array,
    token: jax.Array,
    *,
    vocab_block: int | None = 4096,
    row_block: int | None = 512,
) -> jax.Array:
    """`softmax(unembed(x))[token]` for every row of the final residual `x` `[B, D]`: `[B]` float32.

    Equal to `jax.nn.softmax(model.unembed(config, params, x))[:, token]` up to float32 rounding.

    Args:
      token: scalar token id (traced).
      vocab_block: vocabulary entries per streamed block; None computes all logits at once.
      row_block: rows per block (`jaxedit.runtime.row_blocks`); None: all rows at once.
    """
    matrix, rows_first = _unembedding(config, params)
    vocab = matrix.shape[0 if rows_first else 1]
    block = vocab if vocab_block is None else min(vocab_block, vocab)

    def rows(x: jax.Array) -> jax.Array:  # [b, D] -> [b]
        h = decoder.norm(config, params["final_norm"], x)
        if block == vocab:  # one block: the plain softmax (no slice of a possibly sharded vocabulary)
            return jax.nn.softmax(_block_logits(config, params, h, 0, vocab), axis=-1)[:, token]
        target = _block_logits(config, params, h, token, 1)[:, 0]  # [b]

        def accumulate(carry: tuple[jax.Array, jax.Array], logits: jax.Array) -> tuple[jax.Array, jax.Array]:
            peak, total = carry  # running max and sum of exp(logit - max) per row
            new_peak = jnp.maximum(peak, logits.max(axis=-1))
            return new_peak, total * jnp.exp(peak - new_peak) + jnp.exp(logits - new_peak[:, None]).sum(-1)

        def step(
            carry: tuple[jax.Array, jax.Array], start: jax.Array
        ) -> tuple[tuple[jax.Array, jax.Array], None]:
            return accumulate(carry, _block_logits(config, params, h, start, block)), None

        full, rest = divmod(vocab, block)
        carry = (jnp.full(h.shape[0], -jnp.inf, jnp.float32), jnp.zeros(h.shape[0], jnp.float32))
        carry, _ = jax.lax.scan(step, carry, jnp.arange(full) * block)
        if rest:  # the last, shorter block
            carry = accumulate(carry, _block_logits(config, params, h, full * block, rest))
        peak, total = carry
        return jnp.exp(target - peak) / total

    return map_row_blocks(rows, (x,), row_block)
