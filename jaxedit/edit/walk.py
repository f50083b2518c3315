"""The hidden states of a batch's rows, walked up through MEMIT's critical layers as they are edited.

MEMIT / PMET (docs/methods.md §6-7) read, before solving each critical layer `l` in ascending order, the keys
at `l` and the current values at the last critical layer on the model that already holds the updates of
the layers below `l`. An edit at a layer changes nothing beneath it, so the input of `l` equals the input
of the previous critical layer pushed through the layers in between with the updated weights: the walk
keeps that input for every row and moves it up once per layer, instead of running each read from the
embeddings (PMET at layers 2-6: 7 layer passes of the context rows instead of 25). The results equal
reads from scratch up to float rounding (`tests/edit/test_memit.py`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.core import decoder
from jaxedit.core.config import ModelConfig
from jaxedit.core.layout import Params
from jaxedit.errors import InputError


def _layers(params: Params, start: int, stop: int) -> Params:
    return jax.tree.map(lambda a: a[start:stop], params["layers"])


@functools.partial(jax.jit, static_argnames=("config", "layer"))
def _input_of(params: Params, config: ModelConfig, layer: int, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Residual input of `layer`: `[R, T, D]`."""
    x, _, rotary, causal = decoder.prepare(config, params, ids, mask)
    if layer == 0:
        return x
    return decoder.run_layers(config, _layers(params, 0, layer), x, rotary, causal)[0]


@functools.partial(jax.jit, static_argnames=("config", "start", "stop"))
def _advance(params: Params, config: ModelConfig, start: int, stop: int, h: jax.Array, mask: jax.Array):
    """The input of layer `stop` from the input `h` of layer `start`."""
    rotary, causal = decoder.attention_inputs(config, mask)
    return decoder.run_layers(config, _layers(params, start, stop), h, rotary, causal)[0]


@functools.partial(jax.jit, static_argnames=("config", "layer", "z_layer", "key_site", "z_site"))
def _read_from(
    params: Params,
    config: ModelConfig,
    layer: int,
    z_layer: int,
    key_site: str,
    z_site: str,
    h: jax.Array,
    mask: jax.Array,
    key_pos: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """From the input `h` of `layer`: `key_site` of `layer` and `z_site` of `z_layer` at the key positions."""
    rotary, causal = decoder.attention_inputs(config, mask)
    p_layer = jax.tree.map(lambda a: a[layer], params["layers"])
    out = decoder.block(config, p_layer, h, rotary, causal, {}, (key_site, z_site))
    z = out.taps[z_site]
    if z_layer > layer:
        _, taps = decoder.run_layers(
            config, _layers(params, layer + 1, z_layer + 1), out.resid, rotary, causal, (z_site,)
        )
        z = taps[z_site][-1]
    rows = jnp.arange(h.shape[0])
    return out.taps[key_site][rows, key_pos], z[rows, key_pos]


class LayerWalk:
    """Inputs of the current layer for `rows` of a `build_batch` batch, in chunks of `batch_rows` rows.

    Attention is causal and rows are right-padded, so tokens after the last key position are cut off:
    nothing read depends on them.
    """

    def __init__(
        self, config: ModelConfig, params: Params, batch, rows: np.ndarray, layer: int, batch_rows: int
    ):
        self.config, self.layer, self.rows = config, layer, np.asarray(rows)
        width = -(-(int(batch.key_pos[self.rows].max()) + 1) // 8) * 8
        self.mask = jnp.asarray(batch.mask[self.rows, :width])
        self.key_pos = jnp.asarray(batch.key_pos[self.rows])
        self.chunks = [slice(s, s + batch_rows) for s in range(0, len(self.rows), batch_rows)]
        ids = jnp.asarray(batch.ids[self.rows, :width])
        self.h = [_input_of(params, config, layer, ids[c], self.mask[c]) for c in self.chunks]

    def advance(self, params: Params, layer: int) -> None:
        """Move to the input of `layer` (at or above the current one) through `params`' layers."""
        if layer < self.layer:
            raise InputError(f"the walk is at layer {self.layer} and cannot go down to {layer}")
        if layer > self.layer:
            self.h = [
                _advance(params, self.config, self.layer, layer, h, self.mask[c])
                for h, c in zip(self.h, self.chunks, strict=True)
            ]
            self.layer = layer

    def read(
        self, params: Params, z_layer: int, key_site: str, z_site: str, subset: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keys of the current layer and values of `z_layer` (float64 `[r, F]`, `[r, D]`) through `params`,
        on the walked rows at the ascending positions `subset` (default all), in that order."""
        if subset is None:
            inputs, index = self.h, [np.arange(len(self.rows))[c] for c in self.chunks]
        else:
            subset = np.asarray(subset)
            if np.any(np.diff(subset) <= 0) or subset.min() < 0 or subset.max() >= len(self.rows):
                raise InputError("subset must hold ascending positions of the walked rows")
            picked = []
            for h, c in zip(self.h, self.chunks, strict=True):
                keep = np.flatnonzero(np.isin(np.arange(len(self.rows))[c], subset))
                if len(keep):
                    picked.append(h[jnp.asarray(keep)])
            whole = jnp.concatenate(picked)  # re-chunked: the same shapes for every layer
            size = self.chunks[0].stop - self.chunks[0].start
            inputs = [whole[s : s + size] for s in range(0, len(subset), size)]
            index = [subset[s : s + size] for s in range(0, len(subset), size)]
        keys, values = [], []
        for h, rows in zip(inputs, index, strict=True):
            k, z = _read_from(
                params,
                self.config,
                self.layer,
                z_layer,
                key_site,
                z_site,
                h,
                self.mask[rows],
                self.key_pos[rows],
            )
            keys.append(np.asarray(k, np.float64))
            values.append(np.asarray(z, np.float64))
        return np.concatenate(keys), np.concatenate(values)
