"""The edit-and-score loop shared by the benchmarks: groups of cases edited on the unedited model, each
case scored before and after, one JSON per case so that an interrupted run resumes (docs/methods.md §12).

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
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict, Unpack

from tqdm.auto import tqdm

from jaxedit.edit.delta import Delta, apply
from jaxedit.errors import InputError
from jaxedit.evaluate.report import Report
from jaxedit.io.cache import digest
from jaxedit.io.files import atomic_write_bytes, write_output
from jaxedit.io.loading import Model
from jaxedit.runtime.execution import Execution

# what edits for a group of cases: `(model, request) -> Delta`, or with `batch > 1` `(model, [requests]) -> Delta`
EditFn = Callable[[Model, Any], Delta]

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


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """What one benchmark contributes to `evaluate_edits`: its name, how it scores and summarises cases.

    Attributes:
      name: shown in progress bars ("CounterFact", "zsRE").
      score: `(model, [cases], reference) -> [metrics]`, one metrics dict per case, the cases sharing
        forward batches; `reference` is the unedited model on edited runs.
      summarise: per-case metric dicts -> one summary dict.
      scoring: what `score` depends on: it enters the run key (`run_key`) that results directories are
        claimed with, so unedited scores are shared only between runs scored alike.
      protocol: the summary's `"protocol"` entry for the evaluated cases.
      score_edited: `(model, [cases], [deltas]) -> [metrics]`, case i scored as `score` scores it on
        `apply(model, deltas[i])` with `model` as the reference, several edited models sharing work
        (`counterfact.score_edited_cases`); None: each edited model is scored alone.
    """

    name: str
    score: Score
    summarise: Callable[[Sequence[dict[str, Any]]], dict[str, Any]]
    scoring: Mapping[str, Any]
    protocol: Callable[[Sequence[Any]], Any]
    score_edited: Callable[[Model, Sequence[Any], Sequence[Delta]], list[dict[str, Any]]] | None = None


class RunOptions(TypedDict, total=False):
    """The keyword options every benchmark evaluation takes (`evaluate_edits`, `evaluate_counterfact`,
    `evaluate_zsre`).

    Attributes:
      batch: cases edited together; each group starts from the unedited model (default 1).
      out_dir: `cases/<case_id>.json` per case (reused when every case of a group is there) and
        `summary.json`.
      unedited_dir: `cases/<case_id>.json` of the unedited scores alone, shared by every method
        evaluated on the same model, cases and scoring settings (so each unedited case is scored once).
      execution: `score_cases`, the cases per `score` call (each chunk's files are written when it
        finishes, so an interruption loses at most one chunk), and `progress`.
      settings: what the edit depends on beyond the method's name (hyperparameters, statistics): it
        enters the run key `out_dir` is claimed with.
    """

    batch: int
    out_dir: str | Path | None
    unedited_dir: str | Path | None
    execution: Execution
    settings: Mapping[str, Any] | None


@dataclasses.dataclass(frozen=True)
class _Group:
    """One group of cases edited together (`batch`: the run's batch size; the last group may hold fewer),
    with their files and the rows saved by an earlier run."""

    batch: int
    cases: Sequence[Any]
    paths: list[Path | None]
    digest: str
    saved: list[dict | None]


def evaluate_edits(
    model: Model,
    cases: Sequence[Any],
    edit: EditFn | None,
    benchmark: Benchmark,
    *,
    method: str,
    **options: Unpack[RunOptions],
) -> Report:
    """Score every case on `model` ("pre") and, when `edit` is given, on the model edited for its group
    ("post"); summarise both.

    Args:
      cases: objects with `case_id` and `request`.
      edit: `(model, request) -> Delta`, or with `batch > 1` `(model, [requests]) -> Delta`; None scores
        the unedited model only.
      method: the name the summary gives the edited rows.
      options: see `RunOptions`.

    Returns:
      `{"unedited": summary, method: summary, "protocol", "batch", "run", "seconds"}`.
    """
    start = time.perf_counter()
    unknown = sorted(set(options) - RunOptions.__optional_keys__)
    if unknown:
        raise TypeError(
            f"unknown evaluation options {unknown}; the options are {sorted(RunOptions.__optional_keys__)}"
        )
    batch, execution = options.get("batch", 1), options.get("execution", Execution())
    settings, out_dir = options.get("settings"), options.get("out_dir")
    if not cases:
        raise InputError(f"no {benchmark.name} cases to evaluate")
    if batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    key = run_key(model, method, batch=batch, settings=settings, scoring=benchmark.scoring)
    name = f"{benchmark.name} ({method})"  # the name results directories are claimed with
    directory = Path(out_dir) if out_dir is not None else None
    unedited = Path(options["unedited_dir"]) if options.get("unedited_dir") is not None else None
    if directory is not None:
        claim_directory(directory, {**key, "method": name})
    if unedited is not None:
        claim_directory(unedited, run_key(model, "unedited", scoring=benchmark.scoring))
    digests = {id(c): case_digest(c) for c in cases}
    groups = [
        _saved_group(batch, cases[i : i + batch], directory, digests) for i in range(0, len(cases), batch)
    ]
    todo = [c for g in groups for c, row in zip(g.cases, g.saved, strict=True) if row is None]
    unedited_rows = _unedited_scores(model, todo, benchmark, unedited, digests, execution)
    bar = tqdm(total=len(cases), desc=f"{name} (batch {batch})", disable=not execution.progress)
    if batch == 1 and edit is not None and benchmark.score_edited is not None:
        _score_singles(model, groups, edit, benchmark, unedited_rows, digests, bar)
    else:
        for group in groups:
            _score_group(model, group, edit, benchmark, unedited_rows, digests, execution, bar)
    bar.close()
    rows = [saved for group in groups for saved in group.saved]
    summary = Report(unedited=benchmark.summarise([row["pre"] for row in rows]))
    post = [row["post"] for row in rows if "post" in row]
    if post:
        summary[method] = benchmark.summarise(post)
    summary["protocol"] = benchmark.protocol(cases)
    summary["batch"] = batch
    summary["run"] = {**key, "model": model.source, "n": len(cases)}
    summary["seconds"] = round(time.perf_counter() - start, 1)
    if directory is not None:
        write_output(directory / "summary.json", json.dumps(summary, indent=1).encode())
    return summary


def _saved_group(batch: int, cases: Sequence[Any], directory: Path | None, digests: dict[int, str]) -> _Group:
    paths = [directory / "cases" / f"{c.case_id}.json" if directory is not None else None for c in cases]
    group_digest = digest([digests[id(c)] for c in cases], 16)
    saved = [_read(p, digests[id(c)], group_digest) for p, c in zip(paths, cases, strict=True)]
    return _Group(batch, cases, paths, group_digest, saved)


def _scored(benchmark: Benchmark, model: Model, cases: Sequence[Any], reference: Model | None) -> list[dict]:
    rows = benchmark.score(model, cases, reference)
    if len(rows) != len(cases):
        raise InputError(f"score returned {len(rows)} rows for {len(cases)} cases")
    return rows


def _unedited_scores(
    model: Model,
    cases: Sequence[Any],
    benchmark: Benchmark,
    unedited: Path | None,
    digests: dict[int, str],
    execution: Execution,
) -> dict[int, dict]:
    """The unedited scores of `cases` by `id`, in shared chunks before any edit (one case per group would
    otherwise be scored alone, group after group); read from `unedited` where saved before."""
    chunk = execution.score_cases
    out: dict[int, dict] = {}
    for first in tqdm(
        range(0, len(cases), chunk), desc=f"{benchmark.name}: unedited scores", unit="chunk",
        disable=not execution.progress or len(cases) <= chunk,
    ):  # fmt: skip
        members = cases[first : first + chunk]
        paths = [unedited / "cases" / f"{c.case_id}.json" if unedited is not None else None for c in members]
        for c, path in zip(members, paths, strict=True):
            row = _read(path, digests[id(c)])
            if row is not None:
                out[id(c)] = row["scores"]
        missing = [(c, p) for c, p in zip(members, paths, strict=True) if id(c) not in out]
        if missing:
            rows = _scored(benchmark, model, [c for c, _ in missing], None)
            for (c, path), row in zip(missing, rows, strict=True):
                out[id(c)] = row
                _write(path, {"case": digests[id(c)], "scores": row})
    return out


def _score_group(
    model: Model,
    group: _Group,
    edit: EditFn | None,
    benchmark: Benchmark,
    unedited_rows: dict[int, dict],
    digests: dict[int, str],
    execution: Execution,
    bar: tqdm,
) -> None:
    """Edit for `group` (when some of its cases were not saved before), score those cases on the edited
    model chunk by chunk, and write each case's file; fills `group.saved`."""
    todo = [i for i, saved in enumerate(group.saved) if saved is None]  # scored before an interruption
    bar.update(len(group.cases) - len(todo))
    if not todo:
        return
    edited, edit_summary = None, None
    if edit is not None:
        requests = [c.request for c in group.cases]
        delta = edit(model, requests[0]) if group.batch == 1 else edit(model, requests)
        edited, edit_summary = apply(model, delta), delta.summary()
    for first in range(0, len(todo), execution.score_cases):
        members = todo[first : first + execution.score_cases]
        chunk = [group.cases[i] for i in members]
        post = _scored(benchmark, edited, chunk, model) if edited is not None else None
        for j, i in enumerate(members):
            _save_case(group, i, unedited_rows, digests, None if post is None else post[j], edit_summary)
        bar.update(len(members))  # per chunk: a batch of thousands shows its scoring progress


# one-case groups edited in a row and then scored together (`Benchmark.score_edited`): on the 2-core CPU
# of this project 8 edited models' fluency generations (16 prompts of 50 tokens) take 4.3-5.0 s in one
# call against 2.5-2.7 s each alone (`tools/generation_batch.py`); an interruption loses at most this many edits
EDITS_SCORED_TOGETHER = 8


def _score_singles(
    model: Model,
    groups: Sequence[_Group],
    edit: EditFn,
    benchmark: Benchmark,
    unedited_rows: dict[int, dict],
    digests: dict[int, str],
    bar: tqdm,
) -> None:
    """`_score_group` for one-case groups, `EDITS_SCORED_TOGETHER` edits at a time: each case edited on the
    unedited model, then the edited models scored in one `benchmark.score_edited` call."""
    todo = [group for group in groups if group.saved[0] is None]
    bar.update(len(groups) - len(todo))
    for first in range(0, len(todo), EDITS_SCORED_TOGETHER):
        window = todo[first : first + EDITS_SCORED_TOGETHER]
        deltas = [edit(model, group.cases[0].request) for group in window]
        post = benchmark.score_edited(model, [group.cases[0] for group in window], deltas)
        if len(post) != len(window):
            raise InputError(f"score_edited returned {len(post)} rows for {len(window)} cases")
        for group, row, delta in zip(window, post, deltas, strict=True):
            _save_case(group, 0, unedited_rows, digests, row, delta.summary())
        bar.update(len(window))


def _save_case(
    group: _Group,
    index: int,
    unedited_rows: dict[int, dict],
    digests: dict[int, str],
    post: dict | None,
    edit_summary: dict | None,
) -> None:
    """Write case `index` of `group` with its unedited scores and, on edited runs, its edited ones."""
    case = group.cases[index]
    saved = {
        "case_id": case.case_id, "case": digests[id(case)], "group": group.digest,
        "request": case.request.to_dict(), "pre": unedited_rows[id(case)],
    }  # fmt: skip
    if post is not None:
        saved["post"] = post
        keep = ("id", "method", "layers", "rank")  # a batch's requests repeat in every case
        saved["edit"] = edit_summary if group.batch == 1 else {k: edit_summary[k] for k in keep}
    _write(group.paths[index], saved)
    group.saved[index] = saved
