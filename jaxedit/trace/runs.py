"""The clean and corrupted runs of causal tracing (docs/methods.md §1, steps 1 and 2), one batched forward each.

Row layout: the clean run is a batch of one prompt; the corrupted run is the same prompt repeated once
per noise sample, Gaussian noise added to the token embeddings of the corrupted tokens (the same noise
for every restoration, so cells are comparable). Both record, at every layer and token, the layer input,
the attention output and the MLP output; the restore grids start from these caches.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxedit.core import decoder
from jaxedit.core import interventions as iv
from jaxedit.core.config import ModelConfig
from jaxedit.core.layout import Params

TAPS = ("resid_pre", "attn_out", "mlp_out", "resid_post")


def make_noise(seed: int, samples: int, corrupt_mask: jax.Array, width: int, scale: float) -> jax.Array:
    """`[S, T, D]` Gaussian noise of standard deviation `scale` on corrupted tokens, zero elsewhere."""
    noise = jax.random.normal(jax.random.key(seed), (samples, corrupt_mask.shape[0], width), jnp.float32)
    return scale * noise * corrupt_mask[None, :, None]


def _states(out: decoder.Output) -> dict[str, jax.Array]:
    taps = out.taps  # [B, L, T, W]
    stream = jnp.concatenate([taps["resid_pre"], taps["resid_post"][:, -1:]], axis=1)  # [B, L+1, T, D]
    return {"stream": stream, "attn": taps["attn_out"], "mlp": taps["mlp_out"]}


@functools.partial(jax.jit, static_argnames=("config",))
def clean_and_corrupted(
    params: Params,
    config: ModelConfig,
    ids: jax.Array,
    key_mask: jax.Array,
    noise: jax.Array,
    answer: jax.Array,
) -> tuple[dict, dict, jax.Array, jax.Array]:
    """Run the clean prompt once and the corrupted prompt once per noise sample.

    Args:
      ids: `[T]` token ids of one (left-padded) prompt.
      key_mask: `[T]` its real-token mask.
      noise: `[S, T, D]` added to the token embeddings in the corrupted runs.
      answer: scalar token id read out at the last position.

    Returns:
      clean states (`stream [L+1, T, D]`, `attn`, `mlp` `[L, T, D]`), corrupted states (the same with a
      leading `[S]`), `P_clean` (scalar) and the per-sample corrupted probabilities `[S]`.
    """
    samples = noise.shape[0]
    clean = decoder.forward(params, config, ids[None], key_mask[None], taps=TAPS)
    batch_ids = jnp.broadcast_to(ids, (samples, ids.shape[0]))
    batch_mask = jnp.broadcast_to(key_mask, (samples, ids.shape[0]))
    corrupt = decoder.forward(
        params, config, batch_ids, batch_mask, taps=TAPS, interventions={"embed": iv.add(noise)}
    )
    p_clean = jax.nn.softmax(clean.logits[0, -1])[answer]
    p_corrupt = jax.nn.softmax(corrupt.logits[:, -1], axis=-1)[:, answer]
    clean_states = jax.tree.map(lambda a: a[0], _states(clean))
    return clean_states, _states(corrupt), p_clean, p_corrupt
