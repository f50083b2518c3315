"""CounterFact evaluation of edits (docs/methods.md §12, Meng et al. 2022 §4).

Per record, on the edited model (and on the unedited one for the baseline row):
- Efficacy `ES = [P(o*) > P(o_true)]` on the rewrite prompt, Paraphrase `PS` the same averaged over the
  paraphrases, Neighbourhood `NS = [P(o_true) > P(o*)]` averaged over the neighbourhood prompts, with the
  magnitudes `EM / PM / NM` (mean probability differences); `P` is the length-normalised probability.
- Fluency: generation entropy of texts sampled (top-k 5, as the reference) from the generation prompts.
- EasyEdit-style teacher-forced token accuracy beside them: rewrite and rephrase accuracy of the new
  object's tokens, and locality accuracy (edited top-1 tokens on the neighbourhood prompt's true object
  equal to the unedited model's).
Summaries are means ×100 with Score = harmonic mean of ES, PS, NS. Cases carrying R-Specificity prompts
(`jaxedit.evaluate.rspec.attach_rspec`) also get `RS_spec` and the RETS Score `score_rets`, the arithmetic
mean of ES, PS, NS and RS_spec (Liu et al. 2024).

Reads both layouts: the ROME `counterfact.json` (`requested_rewrite`, `paraphrase_prompts`,
`neighborhood_prompts`, `generation_prompts`) and the EasyEdit split layout (`prompt`, `subject`,
`target_new`, `ground_truth`, `rephrase_prompt`, `locality_prompt`); for the latter, which has no
generation prompts, fluency is measured on the rewrite and rephrase prompts (the summary says so).
Runs are resumable: one JSON per case under `out_dir/cases/`, then `summary.json`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Unpack

import jax.numpy as jnp
import numpy as np

from jaxedit.core.generate import generate_text
from jaxedit.data.records import read_records
from jaxedit.edit.delta import Delta, apply, row_deltas
from jaxedit.edit.requests import Request, as_request
from jaxedit.errors import InputError
from jaxedit.evaluate.metrics import generation_entropy, harmonic_mean, target_scores
from jaxedit.evaluate.report import Report
from jaxedit.evaluate.runner import Benchmark, EditFn, RunOptions, evaluate_edits
from jaxedit.io.loading import Model

# the highest rank of edits whose models generate side by side in `score_edited_cases` (ROME: 1); dense
# fine-tuning changes (rank d_model) would make each row read its own kernel
ROW_DELTA_RANK = 64
SUCCESSES = ("ES", "PS", "NS")  # efficacy, paraphrase, neighbourhood success (ROME §3)
MAGNITUDES = (*SUCCESSES, "EM", "PM", "NM")  # with their magnitudes
TOKEN_ACCURACIES = ("token_acc_rewrite", "token_acc_rephrase", "token_acc_locality")  # EasyEdit's
TOKEN_PROTOCOL = "EasyEdit teacher-forced token accuracy (rewrite / rephrase / locality vs unedited top-1)"


@dataclasses.dataclass(frozen=True)
class CounterfactCase:
    """One CounterFact record in a layout-independent form."""

    case_id: str
    request: Request
    target_true: str
    paraphrases: tuple[str, ...]
    neighborhood: tuple[str, ...]
    generation_prompts: tuple[str, ...]
    layout: str
    rspec: tuple[
        tuple[str, str], ...
    ] = ()  # R-Specificity (prompt, unedited top-1), see `rspec.attach_rspec`


def _case(record: dict) -> CounterfactCase:
    if "requested_rewrite" in record:  # ROME layout
        rewrite = record["requested_rewrite"]
        request = as_request(rewrite)
        return CounterfactCase(
            case_id=str(record.get("case_id", "")),
            request=request,
            target_true=rewrite["target_true"]["str"],
            paraphrases=tuple(record.get("paraphrase_prompts", ())),
            neighborhood=tuple(record.get("neighborhood_prompts", ())),
            generation_prompts=tuple(record.get("generation_prompts", ())),
            layout="rome",
        )
    if "target_new" in record and "ground_truth" in record:  # EasyEdit split layout
        request = as_request(
            {"prompt": record["prompt"], "subject": record["subject"], "target": record["target_new"]}
        )
        rephrase = record.get("rephrase_prompt")
        locality = record.get("locality_prompt")
        return CounterfactCase(
            case_id=str(record.get("case_id", "")),
            request=request,
            target_true=record["ground_truth"],
            paraphrases=(rephrase,) if rephrase else (),
            neighborhood=(locality,) if locality else (),
            generation_prompts=tuple(p for p in (request.text, rephrase) if p),
            layout="easyedit",
        )
    raise InputError(f"not a CounterFact record (ROME or EasyEdit layout): keys {sorted(record)}")


def read_counterfact(path: str | Path | Any) -> list[CounterfactCase]:
    """CounterFact cases in either layout (case ids default to the index), from any source
    `jaxedit.data.read_records` takes (a JSON list, JSON lines, parquet, a saved dataset, ...)."""
    records = read_records(path)
    cases = []
    for index, record in enumerate(records):
        case = _case(record)
        cases.append(case if case.case_id else dataclasses.replace(case, case_id=str(index)))
    return cases


def score_case(
    model: Model,
    case: CounterfactCase,
    *,
    reference: Model | None = None,
    generation_tokens: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of one case on `model`; `reference` (the unedited model) for the locality token accuracy."""
    return score_cases(model, [case], reference=reference, generation_tokens=generation_tokens, seed=seed)[0]


def score_cases(
    model: Model,
    cases: Sequence[CounterfactCase],
    *,
    reference: Model | None = None,
    generation_tokens: int = 50,
    seed: int = 0,
    generation_rows: int = 128,
) -> list[dict[str, Any]]:
    """Metrics of many cases on `model`, equal to `score_case` of each: every teacher-forced prompt of
    every case in shared forward batches, and the generations of several cases per call (at most
    `generation_rows` prompts), each case sampling the random numbers it would sample alone."""
    from jaxedit.evaluate.rspec import rspec_share, rspec_targets

    pairs: list[tuple[str, str]] = []
    starts = []
    for case in cases:
        new, true = case.request.target, case.target_true
        starts.append(len(pairs))
        pairs += [
            (p, t) for p in (case.request.text, *case.paraphrases, *case.neighborhood) for t in (new, true)
        ]
        pairs += rspec_targets(case.rspec, new)
    nll, correct, top = target_scores(model, pairs)
    base_top: list[np.ndarray] = []
    if reference is not None:  # the unedited model's top-1 on each neighbourhood prompt's true object
        locality_pairs = [(p, c.target_true) for c in cases for p in c.neighborhood]
        _, _, base_top = target_scores(reference, locality_pairs)
    base_iter = iter(base_top)
    texts = _generations(model, cases, generation_tokens, seed, generation_rows)

    rows = []
    for index, (case, start) in enumerate(zip(cases, starts, strict=True)):
        n_para, n_neigh = len(case.paraphrases), len(case.neighborhood)
        n_prompts = 1 + n_para + n_neigh
        prob = np.exp(-nll[start : start + 2 * n_prompts]).reshape(n_prompts, 2)  # [prompt, (new, true)]
        acc_new = [float(correct[start + 2 * i].mean()) for i in range(n_prompts)]
        rewrite, para, neigh = prob[:1], prob[1 : 1 + n_para], prob[1 + n_para :]
        out: dict[str, Any] = {
            "ES": float(rewrite[0, 0] > rewrite[0, 1]),
            "EM": float(rewrite[0, 0] - rewrite[0, 1]),
            "PS": float((para[:, 0] > para[:, 1]).mean()) if n_para else None,
            "PM": float((para[:, 0] - para[:, 1]).mean()) if n_para else None,
            "NS": float((neigh[:, 1] > neigh[:, 0]).mean()) if n_neigh else None,
            "NM": float((neigh[:, 1] - neigh[:, 0]).mean()) if n_neigh else None,
            "p_new": prob[:, 0].tolist(),
            "p_true": prob[:, 1].tolist(),
            "token_acc_rewrite": acc_new[0],
            "token_acc_rephrase": float(np.mean(acc_new[1 : 1 + n_para])) if n_para else None,
        }
        if n_neigh:
            edited = [top[start + 2 * (1 + n_para + i) + 1] for i in range(n_neigh)]
            base = [next(base_iter) for _ in range(n_neigh)] if reference is not None else edited
            out["token_acc_locality"] = float(
                np.mean([(a == b).mean() for a, b in zip(edited, base, strict=True)])
            )
        if case.rspec:
            rspec_start = start + 2 * n_prompts
            out["RS_spec"] = rspec_share(nll[rspec_start : rspec_start + 2 * len(case.rspec)])
        if index in texts:
            out["fluency"] = generation_entropy(texts[index])
            out["generations"] = texts[index]
        rows.append(out)
    return rows


def score_edited_cases(
    model: Model,
    cases: Sequence[CounterfactCase],
    deltas: Sequence[Delta],
    *,
    generation_tokens: int = 50,
    seed: int = 0,
    generation_rows: int = 128,
) -> list[dict[str, Any]]:
    """Metrics of each case on its own edited model, `apply(model, deltas[i])` for case i, equal to
    `score_cases` of each edited model (with `model` as the locality reference) up to float32 rounding:
    the teacher-forced scores run on each edited model, the generations of all cases share calls over
    `model`'s weights with each row's delta added (`jaxedit.core.row_deltas`), so the weights are read once
    per decoding step for many edited models instead of once per model."""
    if len(deltas) != len(cases):
        raise InputError(f"{len(deltas)} deltas for {len(cases)} cases")
    kernel = model.params["layers"]["mlp"]["out"]["kernel"]
    # merged in a lower precision, or edits beyond low-rank MLP output changes: each model generates alone
    shared = kernel.dtype == jnp.float32 and all(_low_rank_mlp(d) for d in deltas)
    rows = [
        score_cases(
            apply(model, delta), [case], reference=model, generation_tokens=0 if shared else generation_tokens,
            seed=seed,
        )[0]
        for case, delta in zip(cases, deltas, strict=True)
    ]  # fmt: skip
    if shared:
        texts = _generations(model, cases, generation_tokens, seed, generation_rows, deltas)
        for index, row in enumerate(rows):
            if index in texts:
                row["fluency"] = generation_entropy(texts[index])
                row["generations"] = texts[index]
    return rows


def _low_rank_mlp(edit: Any) -> bool:
    """Whether an edit is a `Delta` of the MLP output kernels alone of rank at most `ROW_DELTA_RANK`."""
    return (
        isinstance(edit, Delta)
        and edit.site == "mlp"
        and not edit.attached
        and edit.left.shape[1] <= ROW_DELTA_RANK
    )


def _generations(
    model: Model,
    cases: Sequence[CounterfactCase],
    tokens: int,
    seed: int,
    max_rows: int,
    deltas: Sequence[Delta] | None = None,
) -> dict[int, list[str]]:
    """Top-k 5 samples of each case's generation prompts by case index, several cases per call
    (`groups` keeps each case's random numbers those of a call of its own); with `deltas`, case i's
    prompts run as `apply(model, deltas[i])` would (`row_deltas`)."""
    todo = [i for i, c in enumerate(cases) if c.generation_prompts] if tokens else []
    out: dict[int, list[str]] = {}
    while todo:
        group = [todo.pop(0)]
        rows = len(cases[group[0]].generation_prompts)
        while todo and rows + len(cases[todo[0]].generation_prompts) <= max_rows:
            rows += len(cases[todo[0]].generation_prompts)
            group.append(todo.pop(0))
        sizes = [len(cases[i].generation_prompts) for i in group]
        prompts = [p for i in group for p in cases[i].generation_prompts]
        per_row = None
        if deltas is not None:
            models = [k for k, size in enumerate(sizes) for _ in range(size)]
            per_row = row_deltas([deltas[i] for i in group], models)
        texts = generate_text(
            model, prompts, max_new_tokens=tokens, top_k=5, seed=seed, groups=sizes, row_deltas=per_row
        )
        for i, end in zip(group, np.cumsum(sizes).tolist(), strict=True):
            out[i] = texts[end - len(cases[i].generation_prompts) : end]
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means ×100 (fluency as is), Score = harmonic mean of ES, PS, NS."""
    out: dict[str, Any] = {"n": len(rows)}
    for key in (*MAGNITUDES, *TOKEN_ACCURACIES, "RS_spec"):
        mean = _mean([r.get(key) for r in rows])
        out[key] = None if mean is None else round(100 * mean, 2)
    fluency = _mean([r.get("fluency") for r in rows])
    out["fluency"] = None if fluency is None else round(fluency, 3)
    parts = [out[k] for k in SUCCESSES]
    out["score"] = round(harmonic_mean(parts), 2) if all(p is not None for p in parts) else None
    rets_parts = [*parts, out["RS_spec"]]  # RETS tables: Efficacy, Generalization, S-Spec, R-Spec (§12)
    out["score_rets"] = (
        round(float(np.mean(rets_parts)), 2) if all(p is not None for p in rets_parts) else None
    )
    return out


def evaluate_counterfact(
    model: Model,
    cases: Sequence[CounterfactCase],
    edit: EditFn | None,
    *,
    method: str,
    generation_tokens: int = 50,
    **options: Unpack[RunOptions],
) -> Report:
    """Edit the cases on the unedited model, one at a time or `batch` together, score each before and
    after (`score_cases`: the scores equal those of one case at a time), summarise (`evaluate_edits`).

    Args:
      edit: `(model, request) -> Delta` (e.g. `lambda m, r: rome(m, r, stats)`); with `batch > 1`,
        `(model, [requests]) -> Delta` (MEMIT / PMET), applied once for the whole group; or None to score
        the unedited model only.
      method: the name the summary gives the edited rows.
      generation_tokens: tokens sampled per generation prompt for fluency (0: no generation).
      options: `batch`, `out_dir`, `unedited_dir`, `execution`, `settings` (`RunOptions`).

    Returns:
      `{"unedited": summary, method: summary, "protocol": ..., "seconds": ...}`.
    """

    def score(m: Model, chunk: Sequence[CounterfactCase], reference: Model | None) -> list[dict[str, Any]]:
        return score_cases(m, chunk, reference=reference, generation_tokens=generation_tokens)

    def protocol(evaluated: Sequence[CounterfactCase]) -> dict[str, Any]:
        layouts = sorted({c.layout for c in evaluated})
        sources = " of the rewrite and rephrase prompts (EasyEdit layout has no generation prompts)"
        return {
            "ES/PS/NS": "ROME CounterFact: P(new) > P(true) (NS: P(true) > P(new)), length-normalised probabilities",
            "token_acc": TOKEN_PROTOCOL,
            "fluency": "generation entropy (2/3 H2 + 4/3 H3)/2 of top-k 5 samples"
            + (sources if "easyedit" in layouts else ""),
            "layouts": layouts,
            "generation_tokens": generation_tokens,
        }

    scoring = {"benchmark": "counterfact", "generation_tokens": generation_tokens}

    def score_edited(
        m: Model, chunk: Sequence[CounterfactCase], deltas: Sequence[Delta]
    ) -> list[dict[str, Any]]:
        return score_edited_cases(m, chunk, deltas, generation_tokens=generation_tokens)

    benchmark = Benchmark("CounterFact", score, summarise, scoring, protocol, score_edited)
    return evaluate_edits(model, cases, edit, benchmark, method=method, **options)
