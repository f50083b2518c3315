"""The params pytree: which arrays exist, their shapes and their logical axes.

One table, derived from `ModelConfig` switches, declares every parameter once (the `ArrayInfo` habit of
jax-llm-examples). Loading checks files against it, `init_params` draws random values from it,
`abstract_params` gives `jax.ShapeDtypeStruct`s for compile-only planning, and `jaxedit.core.sharding`
maps its logical axes onto a device mesh.

Shape letters: V vocabulary, D residual width, L layers, H query heads, K key/value heads, E head width,
F MLP width, P positions. Kernels are stored `[in, out]`; per-layer arrays are stacked on a leading L
axis so the decoder runs them with `lax.scan`.

Layout (optional entries depend on the config switches)::

    embed/tokens [V, D]            embed/positions [P, D]      (learned positions only)
    layers/ln1/{scale,bias} [L, D] layers/ln2/...               (ln2 absent when shared_block_norm)
    layers/attn/q/kernel [L, D, H*E]   q/bias [L, H*E]
    layers/attn/k/kernel [L, D, K*E]   layers/attn/v/kernel [L, D, K*E]
    layers/attn/o/kernel [L, H*E, D]   o/bias [L, D]
    layers/mlp/in/kernel [L, D, F]     layers/mlp/gate/kernel [L, D, F] (gated MLP)
    layers/mlp/out/kernel [L, F, D]    (the edited matrix: docs/methods.md §0 "W_out")
    final_norm/{scale,bias} [D]
    unembed/kernel [D, V]              unembed/bias [V]             (absent when tied / no bias)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.core.config import ModelConfig

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """Shape and logical axis names of one parameter."""

    shape: tuple[int, ...]
    axes: tuple[str | None, ...]


def _norm_specs(config: ModelConfig, lead: tuple[int, ...], lead_axes: tuple[str, ...]) -> dict:
    specs = {"scale": ParamSpec((*lead, config.d_model), (*lead_axes, "embed"))}
    if config.norm == "layernorm":
        specs["bias"] = ParamSpec((*lead, config.d_model), (*lead_axes, "embed"))
    return specs


def _linear(
    lead: tuple[int, ...],
    lead_axes: tuple[str, ...],
    d_in: int,
    d_out: int,
    in_axis: str,
    out_axis: str,
    bias: bool,
) -> dict:
    specs = {"kernel": ParamSpec((*lead, d_in, d_out), (*lead_axes, in_axis, out_axis))}
    if bias:
        specs["bias"] = ParamSpec((*lead, d_out), (*lead_axes, out_axis))
    return specs


def param_specs(config: ModelConfig) -> Params:
    """Nested dict of `ParamSpec` for every parameter the config implies."""
    c = config
    lead, lead_axes = (c.n_layers,), ("layers",)
    q_width, kv_width = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    embed = {"tokens": ParamSpec((c.vocab_size, c.d_model), ("vocab", "embed"))}
    if c.positions == "learned":
        embed["positions"] = ParamSpec((c.max_positions, c.d_model), (None, "embed"))
    attn = {
        "q": _linear(lead, lead_axes, c.d_model, q_width, "embed", "heads", c.qkv_bias),
        "k": _linear(lead, lead_axes, c.d_model, kv_width, "embed", "kv_heads", c.qkv_bias),
        "v": _linear(lead, lead_axes, c.d_model, kv_width, "embed", "kv_heads", c.qkv_bias),
        "o": _linear(lead, lead_axes, q_width, c.d_model, "heads", "embed", c.attn_out_bias),
    }
    mlp = {
        "in": _linear(lead, lead_axes, c.d_model, c.d_mlp, "embed", "mlp", c.mlp_bias),
        "out": _linear(lead, lead_axes, c.d_mlp, c.d_model, "mlp", "embed", c.mlp_bias),
    }
    if c.gated_mlp:
        mlp["gate"] = _linear(lead, lead_axes, c.d_model, c.d_mlp, "embed", "mlp", c.mlp_bias)
    layers = {"ln1": _norm_specs(c, lead, lead_axes), "attn": attn, "mlp": mlp}
    if not c.shared_block_norm:
        layers["ln2"] = _norm_specs(c, lead, lead_axes)
    params: Params = {"embed": embed, "layers": layers, "final_norm": _norm_specs(c, (), ())}
    unembed = {}
    if not c.tie_embeddings:
        unembed["kernel"] = ParamSpec((c.d_model, c.vocab_size), ("embed", "vocab"))
    if c.lm_head_bias:
        unembed["bias"] = ParamSpec((c.vocab_size,), ("vocab",))
    if unembed:
        params["unembed"] = unembed
    return params


def _is_spec(x: object) -> bool:
    return isinstance(x, ParamSpec)


def flatten(tree: Params, prefix: str = "") -> dict[str, Any]:
    """`{"a/b/c": leaf}` view of a nested dict."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "/"))
        else:
            out[path] = value
    return out


def unflatten(flat: dict[str, Any]) -> Params:
    """Inverse of `flatten`."""
    tree: Params = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def param_dtype(config: ModelConfig) -> jnp.dtype:
    return jnp.dtype(config.dtype)


def abstract_params(config: ModelConfig) -> Params:
    """`jax.ShapeDtypeStruct` for every parameter: a skeleton for `jax.eval_shape` and planning."""
    dtype = param_dtype(config)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), param_specs(config), is_leaf=_is_spec)


def param_count(config: ModelConfig) -> int:
    """Number of scalars in the params pytree."""
    flat = flatten(param_specs(config))
    return int(sum(np.prod(s.shape) for s in flat.values()))


def init_params(config: ModelConfig, seed: int = 0, scale: float = 0.02) -> Params:
    """Random params (normal kernels and embeddings, unit norm scales, zero biases), for tests and demos."""
    flat = flatten(param_specs(config))
    keys = jax.random.split(jax.random.key(seed), len(flat))
    dtype = param_dtype(config)
    out = {}
    for key, (path, spec) in zip(keys, sorted(flat.items()), strict=True):
        if path.endswith("/scale"):
            out[path] = jnp.ones(spec.shape, dtype)
        elif path.endswith("/bias"):
            out[path] = jnp.zeros(spec.shape, dtype)
        else:
            out[path] = (scale * jax.random.normal(key, spec.shape)).astype(dtype)
    return unflatten(out)


def logical_axes(config: ModelConfig) -> dict:
    """Logical axis names of every param, keyed by its flattened path (see `param_specs`)."""
    return {path: spec.axes for path, spec in flatten(param_specs(config)).items()}
