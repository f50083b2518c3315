"""Placing params on a device mesh: logical axes (from `jaxedit.core.layout`) -> mesh axes -> `NamedSharding`.

Sharding is data (DESIGN.md principle 6): the layout names each param's logical axes once, a rules
table maps logical axes to mesh axes, and the same jitted functions then run sharded; XLA inserts the
collectives. Only this module mentions mesh axes.

Default rules (tensor parallel over a `model` mesh axis, batch over `data`)::

    heads, kv_heads, mlp, vocab -> "model"      embed, layers, positions -> replicated
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxedit.core import layout
from jaxedit.core.config import ModelConfig
from jaxedit.core.layout import Params
from jaxedit.errors import InputError

DEFAULT_RULES: dict[str, str | None] = {
    "heads": "model",
    "kv_heads": "model",
    "mlp": "model",
    "vocab": "model",
    "embed": None,
    "layers": None,
}


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all), e.g. `{"data": 1, "model": 8}` (default: all on `model`)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = dict(shape or {"data": 1, "model": len(devices)})
    needed = int(np.prod(list(shape.values())))
    if needed != len(devices):
        raise InputError(f"mesh {shape} needs {needed} devices but {len(devices)} are available")
    return Mesh(np.asarray(devices).reshape(tuple(shape.values())), tuple(shape))


def mesh_axes(
    config: ModelConfig,
    mesh_shape: Mapping[str, int],
    rules: Mapping[str, str | None] | None = None,
    uneven: str = "error",
) -> dict[str, tuple[str | None, ...]]:
    """Mesh axis (or None) of every dimension of every param, by flat path.

    A logical axis whose size the mesh axis does not divide raises (`uneven="error"`) or stays
    replicated (`uneven="replicate"`: GPT-2 XL's 25 heads or 50,257-token vocabulary on 8 devices).
    """
    if uneven not in ("error", "replicate"):
        raise InputError(f"uneven must be 'error' or 'replicate', got {uneven!r}")
    rules = dict(DEFAULT_RULES if rules is None else rules)
    shapes = layout.flatten(layout.param_specs(config))
    out = {}
    for path, axes in layout.logical_axes(config).items():
        chosen: list[str | None] = []
        for dim, axis in zip(shapes[path].shape, axes, strict=True):
            target = rules.get(axis) if axis is not None else None
            if target is not None and target in mesh_shape and dim % mesh_shape[target]:
                if uneven == "error":
                    raise InputError(
                        f"cannot shard {path} axis {axis!r} of size {dim} over mesh axis {target!r} of "
                        f"size {mesh_shape[target]}: it does not divide evenly"
                    )
                target = None
            chosen.append(target if target in mesh_shape else None)
        out[path] = tuple(chosen)
    return out


def param_partition_specs(
    config: ModelConfig, mesh: Mesh, rules: Mapping[str, str | None] | None = None, uneven: str = "error"
) -> Params:
    """`PartitionSpec` for every param (see `mesh_axes` for axes that do not divide evenly)."""
    axes = mesh_axes(config, dict(mesh.shape), rules, uneven)
    return layout.unflatten({path: PartitionSpec(*a) for path, a in axes.items()})


def param_shardings(
    config: ModelConfig, mesh: Mesh, rules: Mapping[str, str | None] | None = None, uneven: str = "error"
) -> Params:
    """`NamedSharding` for every param."""
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec),
        param_partition_specs(config, mesh, rules, uneven),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def shard(
    params: Params,
    config: ModelConfig,
    mesh: Mesh,
    rules: Mapping[str, str | None] | None = None,
    uneven: str = "error",
) -> Params:
    """Params placed on `mesh` by the family's logical axes; run `forward` on them as usual. Across
    processes (`jax.distributed`), every process passes the same full params and keeps its shards."""
    return jax.device_put(params, param_shardings(config, mesh, rules, uneven))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding for `[B, ...]` inputs: batch over the `data` axis when the mesh has one."""
    return NamedSharding(mesh, PartitionSpec("data" if "data" in mesh.shape else None))
