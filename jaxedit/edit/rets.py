"""RETS: relation-focused editing at the last relation token with a subject constraint (Liu et al. 2024 §5;
docs/methods.md §8).

ROME's machinery with three changes: the key is read (and `δ` added) at the last token of the prompt, the
last relation token, instead of the last subject token; the layer is middle-late (where relation tracing
peaks); and the update is held back on other subjects' prompts by adding their keys to the statistics:

    C' = C + λ_sc · K_pr K_prᵀ,    u = C'⁻¹ k*,    ΔW = Λ uᵀ,    Λ = (v* − W k* − b) / (k*ᵀ u)

with `K_pr` the keys at the last token of prompts about other subjects (the reference uses ~20,000
CounterFact prompts, summed unnormalised), `k*` the mean key over the contexts and `v* = m0 + δ`. Then
`Ŵ k* + b = v*` exactly, and with `λ_sc = 0`, a single context and the subject's key position the update is
ROME's (docs/methods.md §5). The KL prompt is `"<prompt> is a"` (the reference code) or the paper's
`"<subject> is a"` (`targets.kl_prompt = "{} is a"`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jaxedit.core import tokens as tok
from jaxedit.edit.checks import NON_NEGATIVE, check_fields, check_prefixes
from jaxedit.edit.contexts import ROME_PREFIXES, context_templates
from jaxedit.edit.delta import Delta
from jaxedit.edit.hparams import build, packaged_file, read_hparams
from jaxedit.edit.reads import last_token_taps
from jaxedit.edit.requests import Request, as_request
from jaxedit.edit.rome import statistics_matrix
from jaxedit.edit.stats import KeyStats, StatsError, _cache_dir, _texts_id
from jaxedit.edit.targets import TargetHparams, optimise_targets
from jaxedit.errors import InputError, NumericsError
from jaxedit.io.cache import digest, load_npz, save_npz
from jaxedit.io.loading import Model

RETS_TARGETS = TargetHparams(key_token="last", kl_prompt="{prompt} is a")


@dataclasses.dataclass(frozen=True)
class RetsHparams:
    """RETS settings (docs/methods.md §8); `layer=None` takes the packaged or relative-depth default.

    Attributes:
      subject_weight: `λ_sc`, the weight of the other subjects' keys (0: no subject constraint).
    """

    layer: int | None = None
    prefixes: tuple[tuple[int, int], ...] = ROME_PREFIXES
    targets: TargetHparams = RETS_TARGETS
    subject_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, {"layer": NON_NEGATIVE, "subject_weight": NON_NEGATIVE})
        check_prefixes("RetsHparams", self.prefixes)


def default_hparams(model: Model, path: str | Path | None = None) -> RetsHparams:
    """Settings from `path`, else the packaged file (`hparams/rets/<family>-<layers>.json`: the paper's
    GPT-2 XL / GPT-J layers, SmolLM2's from relation tracing), else GPT-2 XL's relative depth (35 of 48)."""
    file = path or packaged_file("rets", model.config)
    if file is not None:
        return build(RetsHparams, read_hparams(file))
    return RetsHparams(layer=min(model.config.n_layers - 1, round(35 / 48 * model.config.n_layers)))


def last_token_keys(model: Model, layer: int, texts: Sequence[str]) -> np.ndarray:
    """`[n, F]` float64 MLP keys of `layer` at the last token of each text."""
    return last_token_taps(model, layer, texts, "mlp_key").astype(np.float64)


@dataclasses.dataclass(frozen=True)
class SubjectConstraint:
    """`K_pr K_prᵀ` of prompts about many subjects at one layer, and which subject each prompt is about
    (so an edit's own subject can be left out)."""

    layer: int
    matrix: np.ndarray  # [F, F] sum over prompts of k kᵀ (float64)
    prompts: tuple[str, ...]
    subjects: tuple[str, ...]

    def without(self, model: Model, subject: str) -> np.ndarray:
        """The constraint over the prompts about subjects other than `subject`."""
        own = [p for p, s in zip(self.prompts, self.subjects, strict=True) if s == subject]
        if not own:
            return self.matrix
        keys = last_token_keys(model, self.layer, own)
        return self.matrix - keys.T @ keys


def subject_constraint(
    model: Model, layer: int, records: Sequence[Request | dict], *, progress: bool = True
) -> SubjectConstraint:
    """`K_pr K_prᵀ` over the prompts of `records` (e.g. CounterFact records), keys at the prompt's last
    token; cached under the statistics cache keyed by the model fingerprint, layer and prompts."""
    requests = [as_request(r) for r in records]
    if not requests:
        raise InputError("no prompts for the subject constraint")
    prompts = tuple(r.text for r in requests)
    subjects = tuple(r.subject for r in requests)
    key = {
        "fingerprint": model.fingerprint,
        "layer": layer,
        "prompts": _texts_id(prompts),
        "count": len(prompts),
    }
    path = _cache_dir() / "constraint" / f"{digest(key)}.npz"
    entry = load_npz(path, key, required=("matrix",))
    if entry is not None:
        return SubjectConstraint(layer, entry[0]["matrix"], prompts, subjects)
    matrix = np.zeros((model.config.d_mlp, model.config.d_mlp))
    chunk = 512
    for start in tqdm(
        range(0, len(prompts), chunk), desc=f"subject constraint at layer {layer}", disable=not progress
    ):
        keys = last_token_keys(model, layer, prompts[start : start + chunk])
        matrix += keys.T @ keys
    save_npz(path, {"matrix": matrix}, key)
    return SubjectConstraint(layer, matrix, prompts, subjects)


def check_relation_key(model: Model, request: Request) -> None:
    """Refuse a prompt whose last token belongs to the subject: RETS keys on the relation's last token."""
    ids = tok.encode_one(model.tokenizer, request.text)
    _, end = tok.token_span(model.tokenizer, request.text, request.subject, after=request.prompt.index("{}"))
    if end >= len(ids):
        raise InputError(
            f"the last token of {request.text!r} is part of the subject {request.subject!r}: RETS reads its key "
            "at the last relation token, so the prompt must end with relation words after the subject"
        )


def rets(
    model: Model,
    request: Request | dict,
    stats: KeyStats | np.ndarray,
    hp: RetsHparams | None = None,
    *,
    constraint: SubjectConstraint | np.ndarray | None = None,
    templates: Sequence[str] | None = None,
) -> Delta:
    """The RETS delta for one request (docs/methods.md §8).

    Args:
      stats: the layer's key statistics `C`.
      constraint: `K_pr K_prᵀ` (a `SubjectConstraint`, from which the request's own subject is left out,
        or a matrix); None or `hp.subject_weight = 0`: no subject constraint.
    """
    request = as_request(request)
    hp = default_hparams(model) if hp is None else hp
    layer = default_hparams(model).layer if hp.layer is None else hp.layer
    if hp.targets.key_token == "last":
        check_relation_key(model, request)
    c = np.asarray(statistics_matrix(model, stats, layer), np.float64)
    if constraint is not None and hp.subject_weight != 0.0:
        if isinstance(constraint, SubjectConstraint):
            if constraint.layer != layer:
                raise InputError(
                    f"subject constraint of layer {constraint.layer} for an edit at layer {layer}"
                )
            extra = constraint.without(model, request.subject)
        else:
            extra = np.asarray(constraint, np.float64)
        if extra.shape != c.shape:
            raise InputError(f"subject constraint of shape {extra.shape} does not fit statistics {c.shape}")
        c = c + hp.subject_weight * extra
    if templates is None:
        templates = context_templates(model, hp.prefixes, seed=hp.seed)
    targets = optimise_targets(model, [request], layer, list(templates), hp.targets)
    key_mean = targets.key_mean[0].astype(np.float64)
    kernel = np.asarray(model.params["layers"]["mlp"]["out"]["kernel"][layer], np.float64)  # [F, D]
    # v* − W k* − b = (W k + b + δ) − W k* − b
    residual = targets.delta[0] + (targets.key[0].astype(np.float64) - key_mean) @ kernel
    try:
        u = np.linalg.solve(c, key_mean)
    except np.linalg.LinAlgError as err:
        raise StatsError(f"the constrained statistics are singular ({err})") from err
    denominator = float(key_mean @ u)
    if not np.isfinite(u).all() or not np.isfinite(denominator) or denominator == 0.0:
        raise NumericsError("RETS solve is not finite: the statistics are ill-conditioned")
    left = (u / denominator).astype(np.float32)
    info = {
        "layer": layer, "loss": [float(x) for x in targets.loss[0] if np.isfinite(x)], "nll": float(targets.nll[0]),
        "steps": int(targets.steps[0]), "delta_norm": float(np.linalg.norm(targets.delta[0])),
        "m0_norm": float(np.linalg.norm(targets.m0[0])), "contexts": len(templates),
        "subject_weight": hp.subject_weight if constraint is not None else 0.0, "key_token": hp.targets.key_token,
    }  # fmt: skip
    return Delta(
        layers=(layer,), left=left[None, None], right=residual.astype(np.float32)[None, None],
        method="rets" if constraint is not None and hp.subject_weight != 0.0 else "rets-nosc",
        requests=(request.to_dict(),), info=info,
    )  # fmt: skip
