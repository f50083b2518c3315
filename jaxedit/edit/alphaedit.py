"""AlphaEdit: MEMIT's update projected onto the null space of the preserved keys (Fang et al., 2025,
"AlphaEdit: Null-Space Constrained Knowledge Editing for Language Models", ICLR 2025, §3).

MEMIT (docs/methods.md §6) trades the new facts against the preserved ones through `λC` in its solve, and
the trade loses as edits accumulate. AlphaEdit removes the trade: with `C = E[k kᵀ]` the key second
moment of preserved text (the same statistics), its eigenvectors whose eigenvalues lie below a
threshold span (numerically) the null space of the preserved keys, `P = Û Ûᵀ` projects onto it, and
the update is restricted to `P`'s range, so `k₀ᵀ ΔK = 0` for every preserved key `k₀` (in the range
of `C`): the layer's output on preserved knowledge does not move. The edit's own objective then needs
no preservation term; a ridge `l2 · I` keeps it well posed, and in sequential editing the keys `K_p`
of earlier edits are kept in place as well (§3.3). In the `[in, out]` kernel convention, per
critical layer:

    ΔK = (P (K_pᵀK_p + KᵀK) + l2 · I)⁻¹ P Kᵀ R

(`K [n, F]` keys, `R [n, D]` the layer's share of the residual), which by `(PM + l2 I)⁻¹ P =
P (MP + l2 I)⁻¹` lies in `P`'s range. Targets, residual spread and the walk over layers are MEMIT's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxedit.edit.checks import NON_NEGATIVE, POSITIVE
from jaxedit.edit.delta import Delta
from jaxedit.edit.hparams import build, packaged_file, read_hparams
from jaxedit.edit.memit import LayerSolve, MassHparams, MemitHparams, default_layers, memit_layers
from jaxedit.edit.requests import Request
from jaxedit.edit.stats import KeyStats, StatsError
from jaxedit.edit.targets import Targets
from jaxedit.errors import InputError, NumericsError
from jaxedit.io.cache import cache_root, digest, load_npz, save_npz
from jaxedit.io.loading import Model


@dataclasses.dataclass(frozen=True)
class AlphaEditHparams(MassHparams):
    """AlphaEdit settings: MEMIT's layers, contexts and targets (`MassHparams`), the null-space
    `threshold` (on the eigenvalues of `E[k kᵀ]`) and the ridge `l2`."""

    threshold: float = 1e-2
    l2: float = 10.0

    def _limits(self) -> tuple[dict[str, tuple[float, bool]], dict[str, tuple]]:
        return {"threshold": POSITIVE, "l2": NON_NEGATIVE}, {}

    def memit(self) -> MemitHparams:
        """The MEMIT settings AlphaEdit shares (targets, contexts, spread, walk)."""
        return MemitHparams(**self.shared())


def default_hparams(model: Model, path: str | Path | None = None) -> AlphaEditHparams:
    """Settings from `path`, else the packaged file (`hparams/alphaedit/<family>-<layers>.json`), else
    MEMIT's critical layers with the defaults above."""
    file = path or packaged_file("alphaedit", model.config)
    if file is not None:
        return build(AlphaEditHparams, read_hparams(file))
    return AlphaEditHparams(layers=default_layers(model))


@dataclasses.dataclass(frozen=True)
class Projector:
    """`P = Û Ûᵀ` onto the span of the eigenvectors of `C` with eigenvalue below `threshold`."""

    matrix: np.ndarray  # [F, F] float64, symmetric, idempotent
    rank: int  # dimension of the null space kept (columns of Û)
    threshold: float


def null_space_projector(stats: np.ndarray, threshold: float) -> Projector:
    """The projector onto the (numerical) null space of a key second moment `stats [F, F]`."""
    c = np.asarray(stats, np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise InputError(f"statistics must be a square matrix, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise StatsError("statistics are not finite")
    values, vectors = np.linalg.eigh((c + c.T) / 2)
    kept = vectors[:, values < threshold]
    return Projector(kept @ kept.T, int(kept.shape[1]), float(threshold))


def layer_projector(stats: KeyStats | np.ndarray, threshold: float, *, cache: bool = True) -> Projector:
    """`null_space_projector` of one layer's statistics, cached with them (`$JAXEDIT_CACHE/projectors`,
    keyed by the statistics' own record and the threshold) when they are `KeyStats`."""
    if not isinstance(stats, KeyStats) or not cache:
        return null_space_projector(stats.matrix if isinstance(stats, KeyStats) else stats, threshold)
    key = {"kind": "alphaedit-projector", "stats": stats.meta, "tokens": stats.tokens, "threshold": threshold}
    path = cache_root() / "projectors" / f"{digest(key)}.npz"
    found = load_npz(path, {"key": digest(key)}, required=("matrix",))
    if found is not None:
        arrays, meta = found
        return Projector(arrays["matrix"], int(meta["rank"]), float(threshold))
    projector = null_space_projector(stats.matrix, threshold)
    save_npz(path, {"matrix": projector.matrix}, {"key": digest(key), "rank": projector.rank})
    return projector


def critical_layers(model: Model, hp: AlphaEditHparams) -> tuple[int, ...]:
    """`hp.layers` (default: MEMIT's critical layers), ascending."""
    return tuple(sorted(hp.layers if hp.layers is not None else default_layers(model)))


def layer_projectors(
    model: Model, stats: Mapping[int, KeyStats | np.ndarray], hp: AlphaEditHparams
) -> dict[int, Projector]:
    """`layer_projector` of every critical layer's statistics (checked against the model), computed once
    for a whole sequence of batches."""
    projectors = {}
    for layer in critical_layers(model, hp):
        entry = stats.get(layer)
        if entry is None:
            raise StatsError(f"no statistics for critical layer {layer} (mlp_key)")
        if isinstance(entry, KeyStats):
            entry.check(model, layer, "mlp_key")
        projectors[layer] = layer_projector(entry, hp.threshold)
    return projectors


def alphaedit_update(
    projector: np.ndarray, keys: np.ndarray, l2: float, earlier: np.ndarray | None = None
) -> np.ndarray:
    """`((P (K_pᵀK_p + KᵀK) + l2 I)⁻¹ P Kᵀ)ᵀ`, the `left [n, F]` factor of the layer update (float64)."""
    p = np.asarray(projector, np.float64)
    k = np.asarray(keys, np.float64)
    m = k.T @ k if earlier is None else earlier + k.T @ k
    system = p @ m + l2 * np.eye(len(p))
    try:
        solved = np.linalg.solve(system, p @ k.T)  # [F, n]
    except np.linalg.LinAlgError as err:
        raise NumericsError(f"AlphaEdit solve is singular ({err}); raise l2") from err
    if not np.isfinite(solved).all():
        raise NumericsError("AlphaEdit solve is not finite")
    return solved.T


def alphaedit_layers(
    model: Model,
    requests: Sequence[Request | dict],
    stats: Mapping[int, KeyStats | np.ndarray],
    hp: AlphaEditHparams | None = None,
    *,
    earlier_keys: Mapping[int, np.ndarray] | None = None,
    projectors: Mapping[int, Projector] | None = None,
    templates: Sequence[str] | None = None,
    targets: Targets | None = None,
    progress: bool = True,
) -> LayerSolve:
    """One AlphaEdit delta for a batch of `requests`, with the keys each layer used.

    Args:
      stats: key statistics per critical layer (`key_statistics`), the preserved knowledge.
      earlier_keys: per critical layer `K_pᵀK_p`, the keys of earlier edits (`jaxedit.edit.sequential`).
      projectors: precomputed `layer_projector`s (computed, and cached, when None).
      targets: `memit_targets` of the same requests with `hp.memit()`, to reuse them.
    """
    hp = default_hparams(model) if hp is None else hp
    layers = critical_layers(model, hp)
    if projectors is None:
        projectors = layer_projectors(model, stats, hp)
    missing = [layer for layer in layers if layer not in projectors]
    if missing:
        raise StatsError(f"no null-space projector for critical layers {missing}")
    earlier = dict(earlier_keys or {})

    def solver(layer: int, keys: np.ndarray, residual: np.ndarray) -> np.ndarray:
        return alphaedit_update(projectors[layer].matrix, keys, hp.l2, earlier.get(layer))

    memit_hp = dataclasses.replace(hp.memit(), layers=layers)
    solved = memit_layers(
        model, requests, None, memit_hp, templates=templates, targets=targets, solver=solver,
        method="alphaedit", progress=progress,
    )  # fmt: skip
    info = {
        **solved.delta.info, "threshold": hp.threshold, "l2": hp.l2,
        "null_space": {str(layer): projectors[layer].rank for layer in layers},
    }  # fmt: skip
    info.pop("mom2_weight", None)
    return LayerSolve(dataclasses.replace(solved.delta, info=info), solved.keys)


def alphaedit(
    model: Model,
    requests: Sequence[Request | dict],
    stats: Mapping[int, KeyStats | np.ndarray],
    hp: AlphaEditHparams | None = None,
    **options: object,
) -> Delta:
    """One AlphaEdit delta for a batch of `requests`; see `alphaedit_layers` for the options."""
    return alphaedit_layers(model, requests, stats, hp, **options).delta
