"""zsRE evaluation of edits (docs/methods.md §12, as in the MEMIT / PMET / iReVa papers).

Teacher-forced token-level top-1 accuracy of the new answer on the question (efficacy, ES), on its
rephrasing (generalisation, PS), and of the locality answer on the locality prompt (specificity, NS),
each ×100; Score is their arithmetic mean (iReVa's convention).

Reads both layouts in `../shared/data/zsre/`: the MEND one (`src`, `alt`, `rephrase`, `loc`, `loc_ans`,
`subject`; locality is an `nq question:` prompt) and the KnowEdit one (`prompt`, `target_new`,
`rephrase_prompt`, `locality.Relation_Specificity` prompts with their answers). The question is the edit
prompt; records whose subject does not occur in their question cannot be edited with a subject-keyed
method and are skipped by `read_zsre` (their number is returned).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Unpack

import numpy as np

from jaxedit.data.records import read_records
from jaxedit.edit.requests import Request, as_request
from jaxedit.errors import InputError
from jaxedit.evaluate.metrics import target_scores
from jaxedit.evaluate.report import Report
from jaxedit.evaluate.runner import Benchmark, EditFn, RunOptions, evaluate_edits
from jaxedit.io.loading import Model

PROTOCOL = "zsRE: teacher-forced token top-1 accuracy x100 (ES question, PS rephrase, NS locality answer)"


@dataclasses.dataclass(frozen=True)
class ZsreCase:
    case_id: str
    request: Request
    rephrase: str | None
    locality: tuple[tuple[str, str], ...]  # (prompt, answer)
    layout: str


def _first(value: Any) -> str:
    return value[0] if isinstance(value, list) else value


def _case(index: int, record: dict) -> ZsreCase:
    if "src" in record and "alt" in record:  # MEND layout
        request = as_request({"prompt": record["src"], "subject": record["subject"], "target": record["alt"]})
        locality = ((record["loc"], record["loc_ans"]),) if record.get("loc") else ()
        return ZsreCase(str(record.get("case_id", index)), request, record.get("rephrase"), locality, "mend")
    if "prompt" in record and "target_new" in record:  # KnowEdit layout
        request = as_request(
            {"prompt": record["prompt"], "subject": record["subject"], "target": _first(record["target_new"])}
        )
        specific = (record.get("locality") or {}).get("Relation_Specificity", [])
        locality = tuple((item["prompt"], _first(item["ground_truth"])) for item in specific)
        return ZsreCase(
            str(record.get("case_id", index)), request, record.get("rephrase_prompt"), locality, "knowedit"
        )
    raise InputError(f"not a zsRE record (MEND or KnowEdit layout): keys {sorted(record)}")


def read_zsre(path: str | Path | Any) -> tuple[list[ZsreCase], int]:
    """zsRE cases in either layout, from any source `jaxedit.data.read_records` takes, and how many
    records were skipped because their subject is not written in their question."""
    records = read_records(path)
    cases, skipped = [], 0
    for index, record in enumerate(records):
        try:
            cases.append(_case(index, record))
        except InputError as err:
            if "does not occur" not in str(err):
                raise
            skipped += 1
    return cases, skipped


def score_zsre_case(model: Model, case: ZsreCase) -> dict[str, Any]:
    """Token accuracies (fractions) of one case on `model`."""
    return score_zsre_cases(model, [case])[0]


def score_zsre_cases(model: Model, cases: Sequence[ZsreCase], batch_size: int = 64) -> list[dict[str, Any]]:
    """Token accuracies (fractions) of many cases on `model`, all prompts in shared batches."""
    pairs: list[tuple[str, str]] = []
    spans = []
    for case in cases:
        start = len(pairs)
        pairs.append((case.request.text, case.request.target))
        if case.rephrase:
            pairs.append((case.rephrase, case.request.target))
        pairs += list(case.locality)
        spans.append((start, len(pairs)))
    _, correct, _ = target_scores(model, pairs, batch_size=batch_size)
    rows = []
    for case, (start, end) in zip(cases, spans, strict=True):
        mine = correct[start:end]
        out: dict[str, Any] = {"ES": float(mine[0].mean())}
        out["PS"] = float(mine[1].mean()) if case.rephrase else None
        rest = mine[2 if case.rephrase else 1 :]
        out["NS"] = float(np.mean([c.mean() for c in rest])) if rest else None
        rows.append(out)
    return rows


def summarise_zsre(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows)}
    for key in ("ES", "PS", "NS"):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = round(100 * float(np.mean(values)), 2) if values else None
    parts = [out[k] for k in ("ES", "PS", "NS") if out[k] is not None]
    out["score"] = round(float(np.mean(parts)), 2) if parts else None
    return out


def evaluate_zsre(
    model: Model,
    cases: Sequence[ZsreCase],
    edit: EditFn | None,
    *,
    method: str,
    **options: Unpack[RunOptions],
) -> Report:
    """Edit (one at a time or in batches) and score zsRE cases (`evaluate_edits`; `options`: see
    `RunOptions`); `{"unedited": ..., method: ...}`. The cases of one `execution.score_cases` chunk are
    scored in shared forward batches (`score_zsre_cases`)."""

    def score(m: Model, chunk: Sequence[ZsreCase], reference: Model | None) -> list[dict[str, Any]]:
        return score_zsre_cases(m, chunk)

    def protocol(evaluated: Sequence[ZsreCase]) -> str:
        return f"{PROTOCOL}; layouts: {', '.join(sorted({c.layout for c in evaluated}))}"

    benchmark = Benchmark("zsRE", score, summarise_zsre, {"benchmark": "zsre"}, protocol)
    return evaluate_edits(model, cases, edit, benchmark, method=method, **options)
