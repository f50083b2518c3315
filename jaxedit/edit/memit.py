"""MEMIT: mass editing over several MLP layers (docs/methods.md §6), the base of PMET (§7).

Targets are computed once, on the unedited model, at the last critical layer `lL`: `z_i = h_i[lL] + δ_i`
(§4 with `reference="resid_post"`). Then, for each critical layer `l` in ascending order, on the model
holding the updates of the layers before it:

    K = keys at l (mean over the contexts, last subject token)        [n, F]
    R = (Z − h[lL]) · spread(l)                                          [n, D]
        (PMET: Z and the current value are MLP outputs of lL, `Z = m0 + δm`; δa only shaped δm)
    ΔK = (λ C + Kᵀ K)⁻¹ Kᵀ R            (the [in, out] kernel increment)

with `spread = 1 / (lL − l + 1)` (MEMIT, `"even"`) or `1 / sqrt(lL − l + 1)` (PMET, `"sqrt"`). The solve
is one symmetric positive-definite system per layer, in float64 on the host (the reference solves in
float64). The update is stored as factors `left = (A⁻¹ Kᵀ)ᵀ [n, F]`, `right = R [n, D]`, so a batch of n
edits is one rank-≤n `Delta` per layer, withdrawable as a whole through the journal.

The keys and values are read on hidden states walked up from one critical layer to the next
(`walk.LayerWalk`): an update changes nothing beneath its layer, so no read starts from the embeddings.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jaxedit.core.layout import Params
from jaxedit.edit.checks import AT_LEAST_ONE, NON_NEGATIVE, check_fields, check_prefixes
from jaxedit.edit.contexts import MEMIT_PREFIXES, context_templates
from jaxedit.edit.delta import Delta, add_to_params
from jaxedit.edit.hparams import build, packaged_file, read_hparams
from jaxedit.edit.linalg import solve_positive_definite
from jaxedit.edit.precision import working_params
from jaxedit.edit.requests import Request, as_request
from jaxedit.edit.rome import default_layer
from jaxedit.edit.stats import KeyStats, StatsError
from jaxedit.edit.targets import TargetHparams, Targets, build_batch, optimise_targets
from jaxedit.edit.walk import LayerWalk
from jaxedit.errors import InputError, NumericsError
from jaxedit.io.loading import Model
from jaxedit.runtime.execution import Execution


@dataclasses.dataclass(frozen=True)
class MassHparams:
    """The settings MEMIT, PMET and AlphaEdit share: the critical `layers` (None: `default_layers`), how
    the residual is `spread` over them (`"even"`: MEMIT; `"sqrt"`: PMET), the context `prefixes`, the
    target optimisation, rows per statistics batch and the seed."""

    layers: tuple[int, ...] | None = None
    spread: str = "even"
    prefixes: tuple[tuple[int, int], ...] = MEMIT_PREFIXES
    targets: TargetHparams = dataclasses.field(
        default_factory=lambda: TargetHparams(steps=25, clamp=0.75, reference="resid_post")
    )
    batch_rows: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        ranges, choices = self._limits()
        check_fields(self, {"batch_rows": AT_LEAST_ONE, **ranges}, {"spread": ("even", "sqrt"), **choices})
        name = type(self).__name__
        check_prefixes(name, self.prefixes)
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise InputError(f"{name}.layers must be non-empty layer indices, got {self.layers}")

    def _limits(self) -> tuple[dict[str, tuple[float, bool]], dict[str, tuple]]:
        """The ranges and choices of a subclass's own fields (for `check_fields`)."""
        return {}, {}

    def shared(self) -> dict[str, object]:
        """The `MassHparams` fields of these settings, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(MassHparams)}


@dataclasses.dataclass(frozen=True)
class MemitHparams(MassHparams):
    """MEMIT settings: `MassHparams` with the covariance weight λ (`mom2_weight`), the `method` name
    and PMET's ablation switch."""

    mom2_weight: float = 15000.0
    method: str = "memit"
    # PMET's ablation (docs/methods.md §7): also solve the attention output projections towards `a0 + δa`
    update_attn: bool = False

    def _limits(self) -> tuple[dict[str, tuple[float, bool]], dict[str, tuple]]:
        return {"mom2_weight": NON_NEGATIVE}, {"method": ("memit", "pmet")}


def pmet_hparams(layers: tuple[int, ...] | None = None, **changes: object) -> MemitHparams:
    """PMET (docs/methods.md §7, GPT-J CounterFact defaults): δa and δm at the last critical layer, only
    `v = m0 + δm` (MLP-output space) is spread, by `1/sqrt`, with μ = 1, φ 1 → 0.1, 30 steps, lr 0.2,
    λ 6000. The attention clamp and decay equal the MLP ones (the paper gives no separate values)."""
    targets = TargetHparams(
        steps=30, lr=0.2, clamp=0.75, kl_factor=1.0, reference="mlp_out", attn_delta=True, nll_schedule=True
    )
    hp = MemitHparams(layers=layers, mom2_weight=6000.0, spread="sqrt", targets=targets, method="pmet")
    return dataclasses.replace(hp, **changes)


def default_hparams(model: Model, method: str = "memit", path: str | Path | None = None) -> MemitHparams:
    """Settings from `path`, else the packaged file (`hparams/<method>/<family>-<layers>.json`), else
    the five layers ending at the model's ROME layer (GPT-2 XL's MEMIT range 13-17 ends at its ROME
    layer 17) with MEMIT's GPT-J settings or `pmet_hparams`."""
    if method not in ("memit", "pmet"):
        raise InputError(f"method must be 'memit' or 'pmet', got {method!r}")
    file = path or packaged_file(method, model.config)
    if file is not None:
        return build(MemitHparams, read_hparams(file))
    last = default_layer(model)
    layers = tuple(range(max(0, last - 4), last + 1))
    return MemitHparams(layers=layers) if method == "memit" else pmet_hparams(layers)


def default_layers(model: Model) -> tuple[int, ...]:
    """The critical layers of MEMIT's `default_hparams`."""
    return default_hparams(model).layers


def spread_factor(layer: int, last: int, spread: str) -> float:
    """The share of the residual assigned to `layer`: `1/(last-layer+1)` or `1/sqrt(last-layer+1)`."""
    if layer > last:
        raise InputError(f"layer {layer} lies above the last critical layer {last}")
    if spread == "even":
        return 1.0 / (last - layer + 1)
    if spread == "sqrt":
        return 1.0 / math.sqrt(last - layer + 1)
    raise InputError(f"spread must be 'even' or 'sqrt', got {spread!r}")


def solve_update(
    stats: np.ndarray,
    keys: np.ndarray,
    residual: np.ndarray,
    weight: float,
    earlier: np.ndarray | None = None,
) -> np.ndarray:
    """`(λC + K_pᵀK_p + KᵀK)⁻¹ Kᵀ` as `[n, F]` rows (float64 Cholesky; `K [n, F]`; the residual is only
    checked). `earlier`: `K_pᵀK_p`, the keys of edits made before this batch (sequential editing), which
    the solve then also keeps in place; None: none."""
    k = np.asarray(keys, np.float64)
    a = weight * np.asarray(stats, np.float64) + k.T @ k
    if earlier is not None:
        a = a + earlier
    solved = solve_positive_definite(a, k.T, "λC + KᵀK")  # [F, n]
    if not np.isfinite(solved).all() or not np.isfinite(residual).all():
        raise NumericsError("MEMIT solve is not finite")
    return solved.T


def _per_request_mean(values: np.ndarray, owners: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, values.shape[1]))
    np.add.at(out, owners[rows], values[rows])
    return out / np.bincount(owners[rows], minlength=n)[:, None]


def memit_targets(
    model: Model,
    requests: Sequence[Request | dict],
    hp: MemitHparams | None = None,
    *,
    templates: Sequence[str] | None = None,
    progress: bool = True,
) -> Targets:
    """The targets `memit` optimises (at the last critical layer), for reuse across solves."""
    hp = default_hparams(model) if hp is None else hp
    layers = hp.layers if hp.layers is not None else default_layers(model)
    if templates is None:
        templates = context_templates(model, hp.prefixes, seed=hp.seed)
    requests = [as_request(r) for r in requests]
    return optimise_targets(
        model, requests, max(layers), templates, hp.targets, execution=Execution(progress=progress)
    )


def check_conflicts(requests: Sequence[Request]) -> None:
    """Refuse a batch in which one prompt (subject in its relation) is asked for two different targets:
    the solve would silently average them. Exact repeats are harmless and allowed."""
    wanted: dict[str, set[str]] = {}
    for r in requests:
        wanted.setdefault(r.text, set()).add(r.target.strip())
    conflicts = {text: sorted(targets) for text, targets in wanted.items() if len(targets) > 1}
    if conflicts:
        listed = "; ".join(f"{text!r} -> {targets}" for text, targets in list(conflicts.items())[:5])
        raise InputError(
            f"{len(conflicts)} prompts are asked for conflicting targets in one batch ({listed}); "
            "edit them in separate batches or keep one target each"
        )


def _matrices(model: Model, stats: Mapping, layers: Sequence[int], site: str) -> dict[int, np.ndarray]:
    """The statistics matrix of every critical layer (`KeyStats` checked against the model and site)."""
    matrices = {}
    for layer in layers:
        if layer not in stats:
            raise StatsError(f"no statistics for critical layer {layer} ({site})")
        entry = stats[layer]
        if isinstance(entry, KeyStats):
            entry.check(model, layer, site)
            entry = entry.matrix
        matrices[layer] = np.asarray(entry)
    return matrices


@dataclasses.dataclass(frozen=True)
class LayerSolve:
    """A batch's delta and, per critical layer, the `[n, F]` keys its solve used (the `K_p` that later
    batches of a sequence keep in place)."""

    delta: Delta
    keys: dict[int, np.ndarray]


# (layer, keys [n, F], residual [n, D]) -> the `left` factor [n, F] of that layer's update
LayerSolver = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


def memit(
    model: Model,
    requests: Sequence[Request | dict],
    stats: Mapping[int, KeyStats | np.ndarray],
    hp: MemitHparams | None = None,
    *,
    templates: Sequence[str] | None = None,
    targets: Targets | None = None,
    attn_stats: Mapping[int, KeyStats | np.ndarray] | None = None,
    earlier_keys: Mapping[int, np.ndarray] | None = None,
    progress: bool = True,
) -> Delta:
    """One MEMIT delta for all `requests` (a batch), over `hp.layers`; see `memit_layers`."""
    return memit_layers(
        model, requests, stats, hp, templates=templates, targets=targets, attn_stats=attn_stats,
        earlier_keys=earlier_keys, progress=progress,
    ).delta  # fmt: skip


def memit_layers(
    model: Model,
    requests: Sequence[Request | dict],
    stats: Mapping[int, KeyStats | np.ndarray] | None,
    hp: MemitHparams | None = None,
    *,
    templates: Sequence[str] | None = None,
    targets: Targets | None = None,
    attn_stats: Mapping[int, KeyStats | np.ndarray] | None = None,
    earlier_keys: Mapping[int, np.ndarray] | None = None,
    solver: LayerSolver | None = None,
    method: str | None = None,
    progress: bool = True,
) -> LayerSolve:
    """One MEMIT delta for all `requests` (a batch), over `hp.layers`, with the keys each layer used.

    Args:
      stats: key statistics per critical layer (`key_statistics(model, layers, ...)`).
      hp: settings (default: MEMIT's `default_hparams(model)`; PMET: `default_hparams(model, "pmet")`).
      targets: `memit_targets(...)` of the same requests and settings, to reuse them (a λ or layer
        sweep solves again without optimising again); computed when None.
      attn_stats: statistics of the attention output projection's input (`site="attn_heads"`) per
        critical layer, needed with `hp.update_attn` (PMET's ablation).
      earlier_keys: per critical layer `K_pᵀK_p [F, F]`, the keys of edits made before this batch
        (`jaxedit.edit.sequential`): the solve keeps their outputs in place too.
      solver: the per-layer update in place of MEMIT's (AlphaEdit's null-space solve); `stats` and
        `earlier_keys` are then the solver's business and may be None.
      method: the name the delta carries (default `hp.method`).

    With `hp.update_attn` the attention output projections of the critical layers are solved too, each
    layer's before its MLP (the attention output feeds the MLP's keys), towards `a0 + δa` at the last
    critical layer with the same spread; that update is attached to the returned MLP delta.
    """
    requests = [as_request(r) for r in requests]
    if not requests:
        raise InputError("no edit requests")
    check_conflicts(requests)
    hp = default_hparams(model) if hp is None else hp
    layers = tuple(sorted(hp.layers if hp.layers is not None else default_layers(model)))
    last = layers[-1]
    if layers[0] < 0 or last >= model.config.n_layers:
        raise InputError(f"critical layers must lie in [0, {model.config.n_layers}), got {layers}")
    if solver is None:
        if stats is None:
            raise StatsError("MEMIT needs key statistics for its critical layers")
        matrices = _matrices(model, stats, layers, "mlp_key")
        earlier = dict(earlier_keys or {})

        def solver(layer: int, keys: np.ndarray, residual: np.ndarray) -> np.ndarray:
            return solve_update(matrices[layer], keys, residual, hp.mom2_weight, earlier.get(layer))

    elif hp.update_attn:
        raise InputError("update_attn (PMET's attention ablation) needs MEMIT's own solve")
    if hp.update_attn:
        if not hp.targets.attn_delta:
            raise InputError("update_attn needs attention targets: set targets.attn_delta (PMET)")
        if attn_stats is None:
            raise StatsError("update_attn needs attn_stats (key_statistics(..., site='attn_heads'))")
        attn_matrices = _matrices(model, attn_stats, layers, "attn_heads")
    templates = (
        list(templates) if templates is not None else context_templates(model, hp.prefixes, seed=hp.seed)
    )
    if targets is None:
        targets = optimise_targets(
            model, requests, last, templates, hp.targets, execution=Execution(progress=progress)
        )
    elif len(targets.delta) != len(requests):
        raise InputError(f"targets hold {len(targets.delta)} edits, but {len(requests)} requests were given")
    z = targets.value.astype(np.float64)  # [n, D]: h[lL] + δ (MEMIT) or m0 + δm (PMET; δa is dropped)
    batch = build_batch(model, requests, templates, hp.targets.kl_prompt, hp.targets.key_token)
    contexts = np.flatnonzero(~batch.is_kl)
    bare = np.flatnonzero(batch.is_bare)  # one row per request, in request order
    n = len(requests)

    walk = LayerWalk(model.config, working_params(model), batch, contexts, layers[0], hp.batch_rows)
    bare_at = np.searchsorted(contexts, bare)  # the bare rows among the walked context rows

    def solve(params: Params, layer: int, key_site: str, z_site: str, wanted: np.ndarray, layer_solver):
        # keys of every context row at `layer`; current values at the last critical layer of the bare rows
        walk.advance(params, layer)
        keys, _ = walk.read(params, layer, key_site, z_site)
        _, outs = walk.read(params, last, key_site, z_site, bare_at)
        k = _per_request_mean(keys, batch.row_request[contexts], np.arange(len(contexts)), n)  # [n, F]
        residual = (wanted - outs) * spread_factor(layer, last, hp.spread)  # [n, D]
        return layer_solver(layer, k, residual), residual, k  # [n, F], [n, D], [n, F]

    def attn_solver(layer: int, keys: np.ndarray, residual: np.ndarray) -> np.ndarray:
        return solve_update(attn_matrices[layer], keys, residual, hp.mom2_weight)

    params = working_params(model)
    lefts, rights, attn_lefts, attn_rights = [], [], [], []
    used: dict[int, np.ndarray] = {}
    name = hp.method if method is None else method
    if hp.update_attn:
        a0 = walk.read(params, last, "attn_heads", "attn_out", bare_at)[1]
        attn_target = a0 + targets.delta_attn.astype(np.float64)
    for layer in tqdm(layers, desc=f"{name} {n} edits", disable=not progress):
        if hp.update_attn:
            left, residual, _ = solve(params, layer, "attn_heads", "attn_out", attn_target, attn_solver)
            step = Delta(
                layers=(layer,), left=left[None], right=residual[None], method="attn-layer", site="attn"
            )
            params = add_to_params(params, step)
            attn_lefts.append(left)
            attn_rights.append(residual)
        left, residual, used[layer] = solve(params, layer, "mlp_key", hp.targets.reference, z, solver)
        step = Delta(layers=(layer,), left=left[None], right=residual[None], method="memit-layer")
        params = add_to_params(params, step)
        lefts.append(left)
        rights.append(residual)
    info = {
        "layers": list(layers), "spread": hp.spread, "mom2_weight": hp.mom2_weight, "target_site": hp.targets.reference,
        "target_nll": targets.nll.tolist(), "target_steps": targets.steps.tolist(), "contexts": len(templates),
    }  # fmt: skip
    summary = tuple(r.to_dict() for r in requests)
    attached = ()
    if hp.update_attn:
        attn = Delta(
            layers=layers, left=np.stack(attn_lefts), right=np.stack(attn_rights), method=f"{name}-attn",
            requests=summary, site="attn",
        )  # fmt: skip
        attached = (attn,)
    delta = Delta(
        layers=layers, left=np.stack(lefts), right=np.stack(rights), method=name, requests=summary,
        info=info, attached=attached,
    )  # fmt: skip
    return LayerSolve(delta, used)
