"""The edit-and-score loop shared by the benchmarks: groups of cases edited on the unedited model, each
case scored before and after, one JSON per case so that an interrupted run resumes (METHODS.md §12).

A results directory belongs to one run: `run.json` records its key (the model's weight
fingerprint, the method, its settings, the batch size and the scoring settings), and a directory holding
another run's results, or per-case results of unknown origin, is refused rather than mixed. Each case's
file records a digest of the case and of the group it was edited with, and is reused only for the same
case in the same group.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from jaxedit.edit.delta import Delta, apply
from jaxedit.errors import InputError
from jaxedit.io.cache import digest
from jaxedit.io.files import atomic_write_bytes, write_output
from jaxedit.io.loading import Model

log = logging.getLogger(__name__)

Score = Callable[[Model, Sequence[Any], "Model | None"], list[dict[str, Any]]]


def _write(path: Path | None, row: dict) -> None:
    if path is not None:
        atomic_write_bytes(path, json.dumps(row, indent=1).encode())


def _read(path: Path | None, case_digest: str, group_digest: str | None = None) -> dict | None:
    """A saved case row if it is this case's (and, for edited rows, from this group), else None."""
    if path is None or not path.exists():
        return None
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("jaxedit: ignoring unreadable case file %s (%s); scoring it again", path, err)
        return None
    if not isinstance(row, dict) or row.get("case") != case_digest:
        return None
    if group_digest is not None and row.get("group") != group_digest:
        return None
    return row


def case_digest(case: Any) -> str:
    """A digest of everything a case holds (its request and every prompt it is scored on)."""
    value = dataclasses.asdict(case) if dataclasses.is_dataclass(case) else repr(case)
    return digest(value, 16)


def run_key(
    model: Model,
    method: str,
    *,
    batch: int = 1,
    settings: Mapping[str, Any] | None = None,
    scoring: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a run's results depend on: the model's weights (their fingerprint: the same weights loaded
    from another path are the same model), the method and its settings (hyperparameters, layers,
    statistics), the batch size and the scoring settings."""
    from jaxedit import __version__

    return {
        "jaxedit": __version__, "fingerprint": model.fingerprint, "method": method, "batch": batch,
        "settings": json.loads(json.dumps(dict(settings or {}), default=str)),
        "scoring": json.loads(json.dumps(dict(scoring or {}), default=str)),
    }  # fmt: skip


def claim_directory(directory: Path, key: Mapping[str, Any]) -> None:
    """Make `directory` this run's, or refuse (`InputError`) if it holds another run's results."""
    record = directory / "run.json"
    if record.exists():
        try:
            saved = json.loads(record.read_text())["key"]
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(
                f"{record} is not a readable run record; choose another results directory"
            ) from None
        if saved != dict(key):
            fields = sorted(k for k in set(saved) | set(key) if saved.get(k) != key.get(k))
            shown = "; ".join(f"{k}: {saved.get(k)!r} there, {key.get(k)!r} now" for k in fields[:3])
            raise InputError(
                f"{directory} holds the results of another run ({shown}); choose another results "
                "directory (--out) or remove that one"
            )
        return
    cases = directory / "cases"
    if cases.exists() and any(cases.iterdir()):
        raise InputError(
            f"{cases} holds per-case results with no record of the run that made them; choose another "
            "results directory (--out)"
        )
    write_output(record, json.dumps({"key": dict(key)}, indent=1).encode())


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
    settings: Mapping[str, Any] | None = None,
    scoring: Mapping[str, Any] | None = None,
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
      settings: what the edit depends on beyond `name` (hyperparameters, statistics), and `scoring`,
        what `score` depends on: both enter the run key (`run_key`) that `out_dir` and (`scoring` only)
        `unedited_dir` are claimed with.
    """
    if not cases:
        raise InputError(f"no {name} cases to evaluate")
    if batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    if score_chunk < 1:
        raise InputError(f"score_chunk must be at least 1, got {score_chunk}")
    directory = Path(out_dir) if out_dir is not None else None
    unedited = Path(unedited_dir) if unedited_dir is not None else None
    if directory is not None:
        claim_directory(directory, run_key(model, name, batch=batch, settings=settings, scoring=scoring))
    if unedited is not None:
        claim_directory(unedited, run_key(model, "unedited", scoring=scoring))
    digests = {id(c): case_digest(c) for c in cases}

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
        rows: list[dict | None] = [_read(p, digests[id(c)]) for p, c in zip(paths, chunk_cases, strict=True)]
        rows = [None if row is None else row["scores"] for row in rows]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            for i, row in zip(
                missing, score_chunked(model, [chunk_cases[i] for i in missing], None), strict=True
            ):
                rows[i] = row
                _write(paths[i], {"case": digests[id(chunk_cases[i])], "scores": row})
        return rows  # type: ignore[return-value]

    groups = []  # (cases, their files, the group's digest, saved rows or None)
    for start in range(0, len(cases), batch):
        group = cases[start : start + batch]
        paths = [directory / "cases" / f"{c.case_id}.json" if directory is not None else None for c in group]
        group_digest = digest([digests[id(c)] for c in group], 16)
        saved = [_read(p, digests[id(c)], group_digest) for p, c in zip(paths, group, strict=True)]
        groups.append((group, paths, group_digest, saved))

    # the unedited scores of every case still to score, in shared batches before any edit (one case per
    # group would otherwise be scored alone, group after group)
    todo_cases = [
        c for group, _, _, saved in groups for c, row in zip(group, saved, strict=True) if row is None
    ]
    unedited_rows: dict[int, dict] = {}
    for first in tqdm(
        range(0, len(todo_cases), score_chunk), desc=f"{name}: unedited scores", unit="chunk",
        disable=not progress or len(todo_cases) <= score_chunk,
    ):  # fmt: skip
        chunk_cases = todo_cases[first : first + score_chunk]
        unedited_rows.update(zip((id(c) for c in chunk_cases), pre_scores(chunk_cases), strict=True))

    pre_rows: list[dict] = []
    post_rows: list[dict] = []
    bar = tqdm(total=len(cases), desc=f"{name} (batch {batch})", disable=not progress)
    for group, paths, group_digest, saved_group in groups:
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
                post = score_chunked(edited, chunk_cases, model) if edited is not None else None
                for j, i in enumerate(members):
                    case = group[i]
                    saved = {
                        "case_id": case.case_id, "case": digests[id(case)], "group": group_digest,
                        "request": case.request.to_dict(), "pre": unedited_rows[id(case)],
                    }  # fmt: skip
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
