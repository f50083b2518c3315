"""MEMIT: mass editing over several MLP layers (METHODS.md §6), the base of PMET (§7).

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
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxedit import model as core
from jaxedit.config import ModelConfig
from jaxedit.edit.contexts import MEMIT_PREFIXES, context_templates
from jaxedit.edit.delta import Delta, add_to_params
from jaxedit.edit.hparams import build, packaged_file, read_hparams
from jaxedit.edit.rome import default_layer
from jaxedit.edit.stats import KeyStats, StatsError
from jaxedit.edit.targets import Request, TargetHparams, as_request, build_batch, optimise_targets
from jaxedit.layout import Params
from jaxedit.loading import Model


@dataclasses.dataclass(frozen=True)
class MemitHparams:
    """MEMIT settings (`layers=None`: `default_layers`). `spread`: `"even"` (MEMIT) or `"sqrt"` (PMET)."""

    layers: tuple[int, ...] | None = None
    mom2_weight: float = 15000.0
    spread: str = "even"
    prefixes: tuple[tuple[int, int], ...] = MEMIT_PREFIXES
    targets: TargetHparams = dataclasses.field(
        default_factory=lambda: TargetHparams(steps=25, clamp=0.75, reference="resid_post")
    )
    batch_rows: int = 256
    seed: int = 0
    method: str = "memit"


def pmet_hparams(layers: tuple[int, ...] | None = None, **changes: object) -> MemitHparams:
    """PMET (METHODS.md §7, GPT-J CounterFact defaults): δa and δm at the last critical layer, only
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
        raise ValueError(f"method must be 'memit' or 'pmet', got {method!r}")
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
        raise ValueError(f"layer {layer} lies above the last critical layer {last}")
    if spread == "even":
        return 1.0 / (last - layer + 1)
    if spread == "sqrt":
        return 1.0 / math.sqrt(last - layer + 1)
    raise ValueError(f"spread must be 'even' or 'sqrt', got {spread!r}")


def solve_update(stats: np.ndarray, keys: np.ndarray, residual: np.ndarray, weight: float) -> np.ndarray:
    """`(λC + KᵀK)⁻¹ Kᵀ` as `[n, F]` rows (float64 Cholesky; `K [n, F]`, the residual is only checked)."""
    k = np.asarray(keys, np.float64)
    a = weight * np.asarray(stats, np.float64) + k.T @ k
    try:
        factor = np.linalg.cholesky(a)
    except np.linalg.LinAlgError as err:
        raise StatsError(f"λC + KᵀK is not positive definite ({err}); check the statistics") from err
    solved = np.linalg.solve(factor.T, np.linalg.solve(factor, k.T))  # [F, n]
    if not np.isfinite(solved).all() or not np.isfinite(residual).all():
        raise FloatingPointError("MEMIT solve is not finite")
    return solved.T


@functools.partial(jax.jit, static_argnames=("config", "layer", "z_layer", "z_site"))
def _read(
    params: Params,
    config: ModelConfig,
    layer: int,
    z_layer: int,
    z_site: str,
    ids: jax.Array,
    mask: jax.Array,
    key_pos: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Keys at `layer` and `z_site` (`resid_post` or `mlp_out`) of `z_layer` (>= layer) at the key
    positions: `[R, F]`, `[R, D]`."""
    positions = core.positions_from_mask(mask)
    rotary = core.rotary_for(config, positions)
    causal = core.causal_mask(mask)
    x = core.residual_input(config, params, core.embed_tokens(params, ids), positions)
    x, _ = core.run_layers(config, jax.tree.map(lambda a: a[:layer], params["layers"]), x, rotary, causal)
    p_layer = jax.tree.map(lambda a: a[layer], params["layers"])
    out = core.block(config, p_layer, x, rotary, causal, {}, ("mlp_key", z_site))
    z = out.taps[z_site]
    if z_layer > layer:
        between = jax.tree.map(lambda a: a[layer + 1 : z_layer + 1], params["layers"])
        _, taps = core.run_layers(config, between, out.resid, rotary, causal, (z_site,))
        z = taps[z_site][-1]
    rows = jnp.arange(ids.shape[0])
    return out.taps["mlp_key"][rows, key_pos], z[rows, key_pos]


def read_keys(
    model: Model, params: Params, batch, layer: int, z_layer: int, z_site: str, batch_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """`_read` over row chunks of a `build_batch` batch (bounded memory for thousands of edits)."""
    keys, outs = [], []
    for start in range(0, len(batch.ids), batch_rows):
        part = slice(start, start + batch_rows)
        k, h = _read(
            params, model.config, layer, z_layer, z_site, jnp.asarray(batch.ids[part]),
            jnp.asarray(batch.mask[part]),
            jnp.asarray(batch.key_pos[part]),
        )  # fmt: skip
        keys.append(np.asarray(k, np.float64))
        outs.append(np.asarray(h, np.float64))
    return np.concatenate(keys), np.concatenate(outs)


def _per_request_mean(values: np.ndarray, owners: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, values.shape[1]))
    np.add.at(out, owners[rows], values[rows])
    return out / np.bincount(owners[rows], minlength=n)[:, None]


def memit(
    model: Model,
    requests: Sequence[Request | dict],
    stats: Mapping[int, KeyStats | np.ndarray],
    hp: MemitHparams | None = None,
    *,
    templates: Sequence[str] | None = None,
    progress: bool = True,
) -> Delta:
    """One MEMIT delta for all `requests` (a batch), over `hp.layers`.

    Args:
      stats: key statistics per critical layer (`key_statistics(model, layers, ...)`).
      hp: settings (default: MEMIT's `default_hparams(model)`; PMET: `default_hparams(model, "pmet")`).
    """
    requests = [as_request(r) for r in requests]
    if not requests:
        raise ValueError("no edit requests")
    hp = default_hparams(model) if hp is None else hp
    layers = tuple(sorted(hp.layers if hp.layers is not None else default_layers(model)))
    last = layers[-1]
    if layers[0] < 0 or last >= model.config.n_layers:
        raise ValueError(f"critical layers must lie in [0, {model.config.n_layers}), got {layers}")
    matrices = {}
    for layer in layers:
        if layer not in stats:
            raise StatsError(f"no statistics for critical layer {layer}")
        entry = stats[layer]
        if isinstance(entry, KeyStats):
            entry.check(model, layer)
            entry = entry.matrix
        matrices[layer] = np.asarray(entry)
    templates = (
        list(templates) if templates is not None else context_templates(model, hp.prefixes, seed=hp.seed)
    )
    targets = optimise_targets(model, requests, last, templates, hp.targets, progress=progress)
    z = targets.value.astype(np.float64)  # [n, D]: h[lL] + δ (MEMIT) or m0 + δm (PMET; δa is dropped)
    batch = build_batch(model, requests, templates, hp.targets.kl_prompt)
    contexts = np.flatnonzero(~batch.is_kl)
    bare = np.flatnonzero(batch.is_bare)  # one row per request, in request order
    n = len(requests)

    params = model.params
    lefts, rights = [], []
    for layer in tqdm(layers, desc=f"MEMIT {n} edits", disable=not progress):
        keys, outs = read_keys(model, params, batch, layer, last, hp.targets.reference, hp.batch_rows)
        k = _per_request_mean(keys, batch.row_request, contexts, n)  # [n, F]
        residual = (z - outs[bare]) * spread_factor(layer, last, hp.spread)  # [n, D]
        left = solve_update(matrices[layer], k, residual, hp.mom2_weight)  # [n, F]
        step = Delta(layers=(layer,), left=left[None], right=residual[None], method="memit-layer")
        params = add_to_params(params, step)
        lefts.append(left)
        rights.append(residual)
    info = {
        "layers": list(layers), "spread": hp.spread, "mom2_weight": hp.mom2_weight, "target_site": hp.targets.reference,
        "target_nll": targets.nll.tolist(), "target_steps": targets.steps.tolist(), "contexts": len(templates),
    }  # fmt: skip
    return Delta(
        layers=layers, left=np.stack(lefts), right=np.stack(rights), method=hp.method,
        requests=tuple(r.to_dict() for r in requests), info=info,
    )  # fmt: skip
