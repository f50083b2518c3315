"""Edits as values: low-rank changes of the MLP output projections, applied and withdrawn exactly.

Every editing method (ROME, MEMIT, PMET, RETS) changes `W_out`, the output projection of chosen MLPs
(docs/methods.md §0). A `Delta` stores that change as factors: at each of its layers
`ΔK[l] = left[l]ᵀ @ right[l]` for the `[in, out]` kernel (`left [r, F]`, `right [r, D]`); ROME is rank one
(docs/methods.md §5), a MEMIT batch of n edits rank n (§6).

`apply` returns a new `Model` whose params are the unedited ones (`model.base`) plus every applied delta
in order; `revert` drops one delta and recomputes from `base`, so reverting the only edit returns the
original arrays bit for bit, and withdrawing edit 2 of 3 gives exactly what applying edits 1 and 3 gives.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.core.layout import Params
from jaxedit.core.row_deltas import RowDeltas
from jaxedit.display import Rendered, html_table, request_text
from jaxedit.errors import InputError, NotAppliedError
from jaxedit.io.loading import Model


@dataclasses.dataclass(frozen=True, eq=False)
class Delta(Rendered):
    """A change of `W_out` at `layers`: `kernel[l] += left[i].T @ right[i]` for `l = layers[i]`.

    Attributes:
      layers: edited layer indices (ascending, distinct).
      left: `[n_layers, r, d_in]` float32 (`d_in` = d_mlp for the MLP, heads x head_dim for attention).
      right: `[n_layers, r, d_model]` float32.
      method: the method that made it (`rome`, `memit`, ...).
      requests: the edit requests it implements (prompt, subject, target), for journals and reports.
      id: unique id (journal key).
      info: method diagnostics (loss curve, norms), JSON-serialisable.
      site: `mlp` (the MLP output projection) or `attn` (the attention output projection, PMET's
        ablation).
      attached: further deltas made by the same edit (the attention-projection update of PMET's
        ablation next to its MLP update); applied, saved and withdrawn together with this one.
    """

    layers: tuple[int, ...]
    left: np.ndarray
    right: np.ndarray
    method: str
    requests: tuple[dict, ...] = ()
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])
    info: dict = dataclasses.field(default_factory=dict)
    site: str = "mlp"
    attached: tuple[Delta, ...] = ()

    def __post_init__(self) -> None:
        if self.site not in KERNELS:
            raise InputError(f"Delta site must be one of {sorted(KERNELS)}, got {self.site!r}")
        left, right = np.asarray(self.left, np.float32), np.asarray(self.right, np.float32)
        if left.ndim != 3 or right.ndim != 3 or left.shape[:2] != right.shape[:2]:
            raise InputError(
                f"Delta factors must be [layers, rank, dim] alike, got {left.shape} and {right.shape}"
            )
        if len(self.layers) != left.shape[0] or len(set(self.layers)) != len(self.layers):
            raise InputError(f"Delta has {left.shape[0]} factor layers but layers {self.layers}")
        if not (np.isfinite(left).all() and np.isfinite(right).all()):
            raise InputError(f"Delta {self.id} ({self.method}) has non-finite factors")
        object.__setattr__(self, "left", left)
        object.__setattr__(self, "right", right)
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        object.__setattr__(self, "attached", tuple(self.attached))
        if any(a.attached for a in self.attached):
            raise InputError("attached deltas cannot carry deltas of their own")

    def dense(self) -> np.ndarray:
        """`[n_layers, d_mlp, d_model]` kernel increments."""
        return np.einsum("lrf,lrd->lfd", self.left, self.right)

    def norms(self) -> dict[int, float]:
        """Frobenius norm of the increment per layer."""
        return {layer: float(np.linalg.norm(w)) for layer, w in zip(self.layers, self.dense(), strict=True)}

    def tensors(self) -> dict[str, np.ndarray]:
        """Arrays for the journal file: `<id>.left`, `<id>.right`, `<id>.layers`, also of attached deltas."""
        out: dict[str, np.ndarray] = {}
        for part in (self, *self.attached):
            out[f"{part.id}.left"] = part.left
            out[f"{part.id}.right"] = part.right
            out[f"{part.id}.layers"] = np.asarray(part.layers, np.int64)
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no arrays)."""
        return {
            "id": self.id,
            "method": self.method,
            "site": self.site,
            "layers": list(self.layers),
            "rank": int(self.left.shape[1]),
            "requests": list(self.requests),
            "norms": {str(k): v for k, v in self.norms().items()},
            "info": self.info,
            **({"attached": [a.summary() for a in self.attached]} if self.attached else {}),
        }

    def _display_fields(self) -> list[tuple[str, str | None, Any]]:
        """Treescope's fields (`treescope.render_to_text(delta)`): what the delta edits, its norms and
        requests, its factors as arrays."""
        return [
            ("id", ".id", self.id), ("method", ".method", self.method), ("site", ".site", self.site),
            ("layers", ".layers", self.layers), ("rank", ".left.shape[1]", int(self.left.shape[1])),
            ("norms", ".norms()", self.norms()), ("requests", ".requests", self.requests),
            ("info", ".info", self.info), ("attached", ".attached", self.attached),
            ("left", ".left", self.left), ("right", ".right", self.right),
        ]  # fmt: skip

    def _html_table(self) -> str:
        rows = [
            (part.site, layer, norm, part.left.shape[1])
            for part in (self, *self.attached)
            for layer, norm in part.norms().items()
        ]
        edits = "; ".join(request_text(r) for r in self.requests[:5])
        more = f" (+{len(self.requests) - 5} more)" if len(self.requests) > 5 else ""
        caption = f"{self.method} delta {self.id}: {edits}{more}"
        return html_table(caption, ("site", "layer", "‖ΔW‖", "rank"), rows)


KERNELS = {"mlp": ("mlp", "out"), "attn": ("attn", "o")}  # site -> params["layers"][block][name]


@jax.jit
def _add(kernel: jax.Array, layers: jax.Array, left: jax.Array, right: jax.Array) -> jax.Array:
    update = jnp.einsum("lrf,lrd->lfd", left, right).astype(kernel.dtype)
    return kernel.at[layers].add(update)


def add_to_params(params: Params, delta: Delta) -> Params:
    """`params` with the delta (and its attached deltas) added to its output kernels (a new pytree;
    `params` is untouched)."""
    for part in delta.attached:
        params = add_to_params(params, part)
    block, name = KERNELS[delta.site]
    kernel = params["layers"][block][name]["kernel"]
    n_layers, d_in, d_model = kernel.shape
    if max(delta.layers) >= n_layers or delta.left.shape[2] != d_in or delta.right.shape[2] != d_model:
        raise InputError(
            f"delta {delta.id} (layers {delta.layers}, widths {delta.left.shape[2]}x{delta.right.shape[2]}) "
            f"does not fit a model with {n_layers} layers of {d_in}x{d_model} {delta.site} output kernels"
        )
    new = _add(kernel, jnp.asarray(delta.layers), jnp.asarray(delta.left), jnp.asarray(delta.right))
    projection = {**params["layers"][block][name], "kernel": new}
    edited = {**params["layers"][block], name: projection}
    return {**params, "layers": {**params["layers"], block: edited}}


def row_deltas(deltas: Sequence[Delta], rows: Sequence[int]) -> RowDeltas:
    """The MLP output deltas of G edited models (`deltas[g]` makes model g) as one `RowDeltas` for a batch
    whose row i runs as model `rows[i]` (`jaxedit.core.row_deltas`)."""
    if not deltas:
        raise InputError("row_deltas needs at least one delta")
    for delta in deltas:
        if delta.site != "mlp" or delta.attached:
            raise InputError(f"delta {delta.id} ({delta.method}) does not only change MLP output kernels")
    rows = np.asarray(rows, np.int32)
    if rows.size and not (rows.min() >= 0 and rows.max() < len(deltas)):
        raise InputError(f"rows must name models 0..{len(deltas) - 1}, got {rows.min()}..{rows.max()}")
    layers = sorted({layer for d in deltas for layer in d.layers})
    rank = max(d.left.shape[1] for d in deltas)
    left = np.zeros((len(layers), len(deltas), rank, deltas[0].left.shape[2]), np.float32)
    right = np.zeros((len(layers), len(deltas), rank, deltas[0].right.shape[2]), np.float32)
    for g, delta in enumerate(deltas):
        for j, layer in enumerate(delta.layers):
            i = layers.index(layer)
            left[i, g, : delta.left.shape[1]] = delta.left[j]
            right[i, g, : delta.right.shape[1]] = delta.right[j]
    return RowDeltas(
        layers=jnp.asarray(layers, jnp.int32), left=jnp.asarray(left), right=jnp.asarray(right),
        rows=jnp.asarray(rows),
    )  # fmt: skip


def add_edit(params: Params, edit: Any) -> Params:
    """`params` with one journal entry applied: a `Delta`, or any entry with an `add_to(params)` method
    (the adaptor neurons of `jaxedit.edit.adaptors`)."""
    if isinstance(edit, Delta):
        return add_to_params(params, edit)
    return edit.add_to(params)


def apply(model: Model, delta: Delta) -> Model:
    """A new model with `delta` applied after the model's current edits."""
    if any(d.id == delta.id for d in model.edits):
        raise InputError(f"delta {delta.id} is already applied")
    base = model.base if model.base is not None else model.params
    return model.replace(
        params=add_edit(model.params, delta), base=base, edits=(*model.edits, delta),
        base_digest=model.base_fingerprint,
    )  # fmt: skip


def revert(model: Model, delta: Delta | str) -> Model:
    """A new model without `delta` (or the delta with that id): the other edits replayed on `base`."""
    key = delta if isinstance(delta, str) else delta.id
    if not any(d.id == key for d in model.edits):
        applied = ", ".join(d.id for d in model.edits) or "none"
        raise NotAppliedError(f"delta {key} is not applied to this model (applied: {applied})")
    remaining = tuple(d for d in model.edits if d.id != key)
    if not remaining:
        return model.unedited()
    params = model.base
    for d in remaining:
        params = add_edit(params, d)
    return model.replace(params=params, edits=remaining)
