"""The edit-and-score loop shared by the benchmarks: groups of cases edited on the unedited model, each
case scored before and after, one JSON per case so that an interrupted run resumes (METHODS.md §12)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from jaxedit.checkpoints import atomic_write_bytes
from jaxedit.edit.delta import Delta, apply
from jaxedit.loading import Model


def run_edits(
    model: Model,
    cases: Sequence[Any],
    edit: Callable[[Model, Any], Delta] | None,
    score: Callable[[Model, Any, Model | None], dict[str, Any]],
    *,
    name: str,
    batch: int = 1,
    out_dir: str | Path | None = None,
    unedited_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[list[dict], list[dict]]:
    """Score every case on `model` ("pre") and, when `edit` is given, on the model edited for its group
    ("post"); returns the two lists of per-case metric dicts.

    Args:
      cases: objects with `case_id` and `request`.
      edit: `(model, request) -> Delta`, or with `batch > 1` `(model, [requests]) -> Delta`.
      score: `(model, case, reference) -> metrics`; `reference` is the unedited model on edited runs.
      batch: cases edited together; each group starts from the unedited model.
      out_dir: `cases/<case_id>.json` per case (reused when every case of a group is there).
      unedited_dir: `cases/<case_id>.json` of the unedited scores alone, shared by every method evaluated
        on the same model, cases and scoring settings (so each unedited case is scored once).
    """
    if not cases:
        raise ValueError(f"no {name} cases to evaluate")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    directory = Path(out_dir) if out_dir is not None else None
    unedited = Path(unedited_dir) if unedited_dir is not None else None

    def pre_score(case: Any) -> dict:
        path = unedited / "cases" / f"{case.case_id}.json" if unedited is not None else None
        if path is not None and path.exists():
            return json.loads(path.read_text())
        row = score(model, case, None)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, json.dumps(row, indent=1).encode())
        return row

    pre_rows: list[dict] = []
    post_rows: list[dict] = []
    bar = tqdm(total=len(cases), desc=f"{name} (batch {batch})", disable=not progress)
    for start in range(0, len(cases), batch):
        group = cases[start : start + batch]
        paths = [directory / "cases" / f"{c.case_id}.json" if directory is not None else None for c in group]
        if all(p is not None and p.exists() for p in paths):
            saved_group = [json.loads(p.read_text()) for p in paths]
            bar.update(len(group))
        else:
            edited, edit_summary = None, None
            if edit is not None:
                delta = (
                    edit(model, group[0].request) if batch == 1 else edit(model, [c.request for c in group])
                )
                edited, edit_summary = apply(model, delta), delta.summary()
            saved_group = []
            for case, path in zip(group, paths, strict=True):
                if path is not None and path.exists():  # scored before an interruption (same edit)
                    saved_group.append(json.loads(path.read_text()))
                    bar.update(1)
                    continue
                saved = {
                    "case_id": case.case_id,
                    "request": case.request.to_dict(),
                    "pre": pre_score(case),
                }
                if edited is not None:
                    saved["post"] = score(edited, case, model)
                    keep = ("id", "method", "layers", "rank")  # a batch's requests would repeat in every case
                    saved["edit"] = edit_summary if batch == 1 else {k: edit_summary[k] for k in keep}
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_bytes(path, json.dumps(saved, indent=1).encode())
                saved_group.append(saved)
                bar.update(1)  # per case: a batch of thousands shows its scoring progress
        for saved in saved_group:
            pre_rows.append(saved["pre"])
            if "post" in saved:
                post_rows.append(saved["post"])
    bar.close()
    return pre_rows, post_rows
