"""ROME: rank-one model editing (Meng et al. 2022 §3; docs/methods.md §5).

The key `k*` is the mean over the contexts of the MLP key at the last subject token of the edited layer;
the value `v* = m0 + δ` comes from target optimisation (§4). The closed-form update of the paper's
appendix, with `k` and `W k` from the bare prompt:

    u = C⁻¹ k*,    ΔW = (v* − W k) uᵀ / (uᵀ k)

so `Ŵ k = v*` and every direction `x` with `uᵀ x = x̂ᵀ C⁻¹ k* = 0` passes unchanged. `C = E[k kᵀ]` are the
layer's key statistics (§3); the solve runs in float64 on the host, never through an explicit inverse.
The result is a rank-one `Delta` (`left = u / (uᵀ k)`, `right = v* − W k`) that `jaxedit.edit.apply`
adds to the `[in, out]` kernel and `revert` withdraws.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.linalg import cho_solve
from tqdm.auto import tqdm

from jaxedit.edit.checks import NON_NEGATIVE, check_fields, check_prefixes
from jaxedit.edit.contexts import ROME_PREFIXES, context_templates
from jaxedit.edit.delta import Delta, apply
from jaxedit.edit.hparams import build, packaged_file, read_hparams
from jaxedit.edit.linalg import positive_definite_factor
from jaxedit.edit.requests import Request, as_request
from jaxedit.edit.stats import KeyStats, StatsError
from jaxedit.edit.targets import TargetHparams, optimise_targets
from jaxedit.errors import InputError, NumericsError
from jaxedit.io.loading import Model


@dataclasses.dataclass(frozen=True)
class RomeHparams:
    """ROME settings; `layer=None` takes `default_layer`."""

    layer: int | None = None
    prefixes: tuple[tuple[int, int], ...] = ROME_PREFIXES
    targets: TargetHparams = dataclasses.field(default_factory=TargetHparams)
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, {"layer": NON_NEGATIVE})
        check_prefixes("RomeHparams", self.prefixes)


def default_hparams(model: Model, path: str | Path | None = None) -> RomeHparams:
    """Settings from `path`, else the packaged file for the model (`hparams/rome/<family>-<layers>.json`:
    published layers for GPT-2 / GPT-J / NeoX, the traced layer for SmolLM2), else the defaults at GPT-2
    XL's relative depth (layer 17 of 48)."""
    file = path or packaged_file("rome", model.config)
    if file is not None:
        return build(RomeHparams, read_hparams(file))
    return RomeHparams(layer=min(model.config.n_layers - 1, round(17 / 48 * model.config.n_layers)))


def default_layer(model: Model) -> int:
    """The ROME layer of `default_hparams` (docs/methods.md §5)."""
    return default_hparams(model).layer


def statistics_matrix(model: Model, stats: KeyStats | np.ndarray, layer: int) -> np.ndarray:
    """The `[F, F]` matrix of `stats`, checked against the model and layer (a `KeyStats`) or its width."""
    if isinstance(stats, KeyStats):
        stats.check(model, layer)
        matrix = stats.matrix
    else:
        matrix = np.asarray(stats)
    width = model.config.d_mlp
    if matrix.shape != (width, width):
        raise StatsError(f"statistics of shape {matrix.shape} do not fit keys of width {width}")
    return matrix


def rank_one_update(
    stats: np.ndarray, key_mean: np.ndarray, key: np.ndarray, residual: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Factors `(left [F], right [D])` of `ΔW = residual uᵀ / (uᵀ key)`, `u = C⁻¹ key_mean`, in float64.

    `residual` is `v* − W key`. The kernel increment (`[in, out]` layout) is `outer(left, right)`.
    """
    c = np.asarray(stats, np.float64)
    key_mean = np.asarray(key_mean, np.float64)
    factor = positive_definite_factor(c)
    if factor is not None:
        u = cho_solve(factor, key_mean)
    else:
        warnings.warn(
            "the key statistics are not positive definite (their texts gave fewer independent keys than "
            "the key width): the solve follows rounding noise; compute them over more, varied texts",
            RuntimeWarning,
            stacklevel=3,
        )
        try:
            u = np.linalg.solve(c, key_mean)
        except np.linalg.LinAlgError as err:
            message = f"the key statistics are singular ({err}); use more statistics samples"
            raise StatsError(message) from err
    denominator = float(u @ np.asarray(key, np.float64))
    if not np.isfinite(u).all() or not np.isfinite(denominator) or denominator == 0.0:
        raise NumericsError("ROME solve is not finite: the key statistics are ill-conditioned")
    left = u / denominator
    return left.astype(np.float32), np.asarray(residual, np.float64).astype(np.float32)


def rome(
    model: Model,
    request: Request | dict,
    stats: KeyStats | np.ndarray,
    hp: RomeHparams | None = None,
    *,
    templates: Sequence[str] | None = None,
) -> Delta:
    """The ROME delta for one request on `model` (which may already carry edits).

    Args:
      request: `Request(prompt="{} is located in the city of", subject="The Eiffel Tower", target="Rome")`
        or a dict / CounterFact record.
      stats: the layer's key statistics (`key_statistics`); checked against the model and layer.
      hp: settings (default: `default_hparams(model)`, the packaged file for the model).
      templates: context templates (default: `context_templates(model, hp.prefixes, seed=hp.seed)`).
    """
    request = as_request(request)
    hp = default_hparams(model) if hp is None else hp
    layer = default_layer(model) if hp.layer is None else hp.layer
    matrix = statistics_matrix(model, stats, layer)
    templates = (
        list(templates) if templates is not None else context_templates(model, hp.prefixes, seed=hp.seed)
    )
    targets = optimise_targets(model, [request], layer, templates, hp.targets)
    left, right = rank_one_update(matrix, targets.key_mean[0], targets.key[0], targets.delta[0])
    info = {
        "layer": layer,
        "loss": [float(x) for x in targets.loss[0] if np.isfinite(x)],
        "nll": float(targets.nll[0]),
        "steps": int(targets.steps[0]),
        "delta_norm": float(np.linalg.norm(targets.delta[0])),
        "m0_norm": float(np.linalg.norm(targets.m0[0])),
        "contexts": len(templates),
    }
    return Delta(
        layers=(layer,), left=left[None, None], right=right[None, None], method="rome",
        requests=(request.to_dict(),), info=info,
    )  # fmt: skip


def rome_sequence(
    model: Model,
    requests: Sequence[Request | dict],
    stats: KeyStats | np.ndarray,
    hp: RomeHparams | None = None,
    *,
    templates: Sequence[str] | None = None,
    progress: bool = True,
) -> Delta:
    """ROME applied sequentially (the many-edit contrast of MEMIT / PMET, docs/methods.md §6): each
    request's rank-one update is computed on the model holding the previous ones; the sum of the updates
    is returned as one rank-n delta (exactly the model the sequence produced), method `rome-seq`."""
    requests = [as_request(r) for r in requests]
    if not requests:
        raise InputError("no edit requests")
    hp = default_hparams(model) if hp is None else hp
    if templates is None:
        templates = context_templates(model, hp.prefixes, seed=hp.seed)
    current, steps = model, []
    for request in tqdm(requests, desc=f"ROME × {len(requests)} in sequence", disable=not progress):
        step = rome(current, request, stats, hp, templates=templates)
        current = apply(current, step)
        steps.append(step)
    return Delta(
        layers=steps[0].layers, left=np.concatenate([s.left for s in steps], axis=1),
        right=np.concatenate([s.right for s in steps], axis=1), method="rome-seq",
        requests=tuple(r.to_dict() for r in requests),
        info={"layer": steps[0].layers[0], "steps": [s.info["steps"] for s in steps]},
    )  # fmt: skip
