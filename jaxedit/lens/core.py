"""The logit lens at the last token of prompts (docs/methods.md §2): `softmax(unembed(final_norm(h[l])))`.

One jitted forward per batch records the residual stream at the last real token of every row (before and
after each sublayer when asked), projects each state through the final norm and the unembedding, and
keeps only what the analyses read: the top-k token ids per layer and the ranks of chosen tokens (rank 1
= the argmax). Sublayer updates at the last token can be zeroed for a set of layers (blocking, §2).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.core import decoder
from jaxedit.core import interventions as iv
from jaxedit.core import tokens as tok
from jaxedit.core.config import ModelConfig
from jaxedit.core.decoder import last_positions
from jaxedit.core.layout import Params
from jaxedit.errors import InputError
from jaxedit.io.loading import Model

STATES = ("resid_post", "resid_pre", "resid_mid")


@dataclasses.dataclass(frozen=True)
class LensReadout:
    """Lens of the last token of each prompt, per layer.

    Attributes:
      top: `{state: [n, L, k]}` token ids of the top-k lens tokens (`resid_post` = output of layer l;
        `resid_pre` its input; `resid_mid` = input + attention output, the MLP's input stream).
      ranks: `[n, L, m]` rank (1 = argmax) of the `watch` tokens in the lens of `resid_post`.
      states: `{state: [n, L, D]}` the residual states themselves (float32).
      final: `[n]` the model's top-1 next token.
    """

    top: dict[str, np.ndarray]
    ranks: np.ndarray
    states: dict[str, np.ndarray]
    final: np.ndarray


@functools.partial(jax.jit, static_argnames=("config", "k", "states", "blocked_site"))
def _readout(
    params: Params,
    config: ModelConfig,
    ids: jax.Array,
    mask: jax.Array,
    watch: jax.Array,
    blocked: jax.Array,
    k: int,
    states: tuple[str, ...],
    blocked_site: str | None,
) -> tuple[dict, jax.Array, dict, jax.Array]:
    last = last_positions(mask)
    rows = jnp.arange(ids.shape[0])
    edits = {}
    if blocked_site is not None:  # zero that sublayer's update at the last token of the blocked layers
        where = blocked[None, :, None] & (jnp.arange(ids.shape[1])[None, None, :] == last[:, None, None])
        edits[blocked_site] = iv.replace(where, jnp.zeros((*where.shape, config.d_model), jnp.float32))
    taps = ("resid_pre", "attn_out", "resid_post")
    out = decoder.forward(params, config, ids, mask, taps=taps, interventions=edits)
    at = {name: out.taps[name][rows, :, last].astype(jnp.float32) for name in taps}  # [B, L, D]
    values = {
        "resid_post": at["resid_post"],
        "resid_pre": at["resid_pre"],
        "resid_mid": at["resid_pre"] + at["attn_out"],
    }
    top, kept = {}, {}
    for name in states:
        logits = decoder.unembed(config, params, values[name])  # [B, L, V]
        top[name] = jax.lax.top_k(logits, k)[1]
        kept[name] = values[name]
        if name == "resid_post":
            watched = jnp.take_along_axis(
                logits, jnp.broadcast_to(watch[:, None, :], (*logits.shape[:2], watch.shape[-1])), -1
            )
            ranks = 1 + jnp.sum(logits[..., None, :] > watched[..., None], axis=-1)  # [B, L, m]
    final = jnp.argmax(out.logits[rows, last], -1)
    return top, ranks, kept, final


def lens_readout(
    model: Model,
    prompts: Sequence[str],
    *,
    watch: np.ndarray | None = None,
    k: int = 50,
    states: Sequence[str] = ("resid_post",),
    blocked_layers: Sequence[int] = (),
    blocked_site: str | None = None,
    batch: int = 32,
) -> LensReadout:
    """Lens readout of the last token of each prompt (see `LensReadout`).

    Args:
      watch: `[n, m]` token ids whose `resid_post` lens ranks to report (default: none).
      blocked_layers: zero `blocked_site` at the last token of these layers.
      blocked_site: `mlp_out` or `attn_out`.
    """
    unknown = set(states) - set(STATES)
    if unknown or "resid_post" not in states:
        raise InputError(f"states must include resid_post and come from {STATES}, got {tuple(states)}")
    if blocked_site not in (None, "mlp_out", "attn_out"):
        raise InputError(f"blocked_site must be 'mlp_out' or 'attn_out', got {blocked_site!r}")
    if not prompts:
        raise InputError("no prompts for the lens")
    n_layers = model.config.n_layers
    if any(not 0 <= layer < n_layers for layer in blocked_layers):
        raise InputError(f"blocked layers {tuple(blocked_layers)} outside the model's {n_layers} layers")
    blocked = np.zeros(n_layers, bool)
    blocked[list(blocked_layers)] = True
    watch = np.zeros((len(prompts), 1), np.int32) if watch is None else np.asarray(watch, np.int32)
    parts: list[tuple] = []
    for start in range(0, len(prompts), batch):
        ids, mask = tok.encode(model.tokenizer, prompts[start : start + batch], side="right", multiple=8)
        parts.append(
            jax.device_get(
                _readout(
                    model.params, model.config, ids, mask, jnp.asarray(watch[start : start + batch]),
                    jnp.asarray(blocked), k, tuple(states), blocked_site if blocked.any() else None,
                )
            )
        )  # fmt: skip
    return LensReadout(
        top={s: np.concatenate([p[0][s] for p in parts]) for s in states},
        ranks=np.concatenate([p[1] for p in parts]),
        states={s: np.concatenate([p[2][s] for p in parts]) for s in states},
        final=np.concatenate([p[3] for p in parts]),
    )
