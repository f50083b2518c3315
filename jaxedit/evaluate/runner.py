"""The edit-and-score loop shared by the benchmarks: groups of cases edited on the unedited model, each
case scored before and after, one JSON per case so that an interrupted run resumes (METHODS.md §12)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from jaxedit.edit.delta import Delta, apply
from jaxedit.errors import InputError
from jaxedit.files import atomic_write_bytes
from jaxedit.loading import Model

Score = Callable[[Model, Sequence[Any], "Model | None"], list[dict[str, Any]]]


def _write(path: Path | None, row: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(row, indent=1).encode())


def run_edits(
    model: Model,
    cases: Sequence[Any],
    edit: Callable[[Model, Any], Delta] | None,
    score: Score,
    *,
    name: str,
    batch: int = 1,
    out_dir: str | Path | None = None,
    unedited_dir: str | Path | None = None,
    progress: bool = True,
    score_chunk: int = 64,
) -> tuple[list[dict], list[dict]]:
    """Score every case on `model` ("pre") and, when `edit` is given, on the model edited for its group
    ("post"); returns the two lists of per-case metric dicts.

    Args:
      cases: objects with `case_id` and `request`.
      edit: `(model, request) -> Delta`, or with `batch > 1` `(model, [requests]) -> Delta`.
      score: `(model, [cases], reference) -> [metrics]`, one metrics dict per case, the cases sharing
        forward batches; `reference` is the unedited model on edited runs.
      batch: cases edited together; each group starts from the unedited model.
      out_dir: `cases/<case_id>.json` per case (reused when every case of a group is there).
      unedited_dir: `cases/<case_id>.json` of the unedited scores alone, shared by every method evaluated
        on the same model, cases and scoring settings (so each unedited case is scored once).
      score_chunk: cases per `score` call (each chunk's files are written when it finishes, so an
        interruption loses at most one chunk).
    """
    if not cases:
        raise InputError(f"no {name} cases to evaluate")
    if batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    if score_chunk < 1:
        raise InputError(f"score_chunk must be at least 1, got {score_chunk}")
    directory = Path(out_dir) if out_dir is not None else None
    unedited = Path(unedited_dir) if unedited_dir is not None else None

    def score_chunked(m: Model, chunk_cases: Sequence[Any], reference: Model | None) -> list[dict]:
        rows = score(m, chunk_cases, reference)
        if len(rows) != len(chunk_cases):
            raise InputError(f"score returned {len(rows)} rows for {len(chunk_cases)} cases")
        return rows

    def pre_scores(chunk_cases: Sequence[Any]) -> list[dict]:
        """Unedited scores, read from `unedited_dir` where they were saved before."""
        paths = [
            unedited / "cases" / f"{c.case_id}.json" if unedited is not None else None for c in chunk_cases
        ]
        rows: list[dict | None] = [
            json.loads(p.read_text()) if p is not None and p.exists() else None for p in paths
        ]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            for i, row in zip(
                missing, score_chunked(model, [chunk_cases[i] for i in missing], None), strict=True
            ):
                rows[i] = row
                _write(paths[i], row)
        return rows  # type: ignore[return-value]

    pre_rows: list[dict] = []
    post_rows: list[dict] = []
    bar = tqdm(total=len(cases), desc=f"{name} (batch {batch})", disable=not progress)
    for start in range(0, len(cases), batch):
        group = cases[start : start + batch]
        paths = [directory / "cases" / f"{c.case_id}.json" if directory is not None else None for c in group]
        saved_group: list[dict | None] = [
            json.loads(p.read_text()) if p is not None and p.exists() else None for p in paths
        ]
        todo = [i for i, saved in enumerate(saved_group) if saved is None]  # scored before an interruption
        bar.update(len(group) - len(todo))
        if todo:
            edited, edit_summary = None, None
            if edit is not None:
                delta = (
                    edit(model, group[0].request) if batch == 1 else edit(model, [c.request for c in group])
                )
                edited, edit_summary = apply(model, delta), delta.summary()
            for first in range(0, len(todo), score_chunk):
                members = todo[first : first + score_chunk]
                chunk_cases = [group[i] for i in members]
                pre = pre_scores(chunk_cases)
                post = score_chunked(edited, chunk_cases, model) if edited is not None else None
                for j, i in enumerate(members):
                    case = group[i]
                    saved = {"case_id": case.case_id, "request": case.request.to_dict(), "pre": pre[j]}
                    if post is not None:
                        saved["post"] = post[j]
                        keep = ("id", "method", "layers", "rank")  # a batch's requests repeat in every case
                        saved["edit"] = edit_summary if batch == 1 else {k: edit_summary[k] for k in keep}
                    _write(paths[i], saved)
                    saved_group[i] = saved
                bar.update(len(members))  # per chunk: a batch of thousands shows its scoring progress
        for saved in saved_group:
            pre_rows.append(saved["pre"])
            if "post" in saved:
                post_rows.append(saved["post"])
    bar.close()
    return pre_rows, post_rows
