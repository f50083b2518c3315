"""One sublayer state at the last token of many texts, read in batches (the keys of RETS' subject
constraint, docs/methods.md §8; the MLP inputs of iReVa's mean input and out-of-scope prompts, §9).

Only the layers up to the one read run; rows are right-padded, so a row's last real token is at
`mask.sum() − 1`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.core import decoder
from jaxedit.core import tokens as tok
from jaxedit.core.config import ModelConfig
from jaxedit.core.layout import Params
from jaxedit.edit.precision import working_params
from jaxedit.errors import InputError
from jaxedit.io.loading import Model

VECTOR_TAPS = ("resid_pre", "attn_out", "mlp_in", "mlp_key", "mlp_out", "resid_post")  # one vector a token


@functools.partial(jax.jit, static_argnames=("config", "layer", "tap"))
def _last_token_tap(
    params: Params, config: ModelConfig, layer: int, tap: str, ids: jax.Array, mask: jax.Array
) -> jax.Array:
    x, _, rotary, causal = decoder.prepare(config, params, ids, mask)
    stack = jax.tree.map(lambda a: a[: layer + 1], params["layers"])
    _, taps = decoder.run_layers(config, stack, x, rotary, causal, (tap,))
    last = mask.sum(-1) - 1
    return taps[tap][layer, jnp.arange(ids.shape[0]), last].astype(jnp.float32)


def last_token_taps(model: Model, layer: int, texts: Sequence[str], tap: str, batch: int = 64) -> np.ndarray:
    """`[n, width]` float32: the `tap` (`jaxedit.core.interventions`, e.g. `mlp_key`, `mlp_in`) of `layer` at
    the last token of each text."""
    if tap not in VECTOR_TAPS:
        raise InputError(f"tap must be one of {', '.join(VECTOR_TAPS)}, got {tap!r}")
    if not 0 <= layer < model.config.n_layers:
        raise InputError(f"layer {layer} is outside the model's {model.config.n_layers} layers")
    out = []
    for start in range(0, len(texts), batch):
        ids, mask = tok.encode(model.tokenizer, texts[start : start + batch], side="right", multiple=8)
        out.append(np.asarray(_last_token_tap(working_params(model), model.config, layer, tap, ids, mask)))
    width = model.config.d_mlp if tap == "mlp_key" else model.config.d_model
    return np.concatenate(out) if out else np.zeros((0, width), np.float32)
