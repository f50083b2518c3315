"""Average causal traces over a prompt set by token class (docs/methods.md §1; Meng et al. 2022 Fig. 3, Liu et al. 2024 Table 1).

`trace_dataset` keeps the facts the model predicts correctly (its greedy first token is the answer's
first token), traces each with the answer as readout, and averages the indirect effect
`IE = P_restored - P_corrupt` per layer over the tokens of each class:

- subject corruption (Meng et al. 2022): first / middle / last subject token, first subsequent token,
  further tokens, last token;
- relation corruption (Liu et al. 2024 Table 1): `rp` relation tokens before the subject, `fs` / `ms` / `ls`
  first / middle / last subject token, `fr` / `mr` / `lr` first / middle / last relation token after it.

A class with no token in a prompt (a one-token subject has no middle) is left out of that prompt's
average. Per-fact traces are written to `out_dir/facts/` as they finish, so an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxedit.core import tokens as tok
from jaxedit.core.decoder import logits_at
from jaxedit.errors import InputError
from jaxedit.io.cache import digest
from jaxedit.io.files import atomic_write_bytes, write_output
from jaxedit.io.loading import Model
from jaxedit.runtime.execution import Execution
from jaxedit.trace import schedule
from jaxedit.trace.api import Noise, TraceResult, answer_token, corrupted_tokens, noise_scale_for, trace

log = logging.getLogger(__name__)

SUBJECT_CLASSES = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
)
RELATION_CLASSES = ("rp", "fs", "ms", "ls", "fr", "mr", "lr")


def token_classes(
    n_tokens: int, subject: tuple[int, int], corruption: str, first_real: int = 0
) -> dict[str, list[int]]:
    """Token indices of every class for one prompt of `n_tokens` with subject span `[b, e)`.

    `first_real` skips leading special tokens (BOS) in the relation prefix.
    """
    b, e = subject
    last = n_tokens - 1
    if corruption == "relation":
        after = list(range(e, n_tokens))
        return {
            "rp": list(range(first_real, b)),
            "fs": [b],
            "ms": list(range(b + 1, e - 1)),
            "ls": [e - 1],
            "fr": after[:1],
            "mr": after[1:-1],
            "lr": after[-1:] if after else [],
        }
    return {
        "first subject token": [b],
        "middle subject tokens": list(range(b + 1, e - 1)),
        "last subject token": [e - 1],
        "first subsequent token": [e] if e <= last else [],
        "further tokens": list(range(e + 1, last)),
        "last token": [last],
    }


@dataclasses.dataclass
class DatasetTrace:
    """Average indirect effects by token class.

    Attributes:
      aie: kind -> `[L, n_classes]` mean IE over facts (NaN where no fact has the class).
      counts: facts contributing to each class.
      n_facts: traced facts; n_filtered: facts dropped because the model got them wrong;
        n_untraced: known facts left untraced when the time budget (`max_seconds`) ran out.
      seconds: filtering plus the tracing time of every fact (as measured when it was traced, so a run
        resumed from its cache reports the work of the whole run, not the resumption).
    """

    corruption: str
    classes: list[str]
    kinds: list[str]
    aie: dict[str, np.ndarray]
    counts: list[int]
    n_facts: int
    n_considered: int
    n_filtered: int
    p_clean: float
    p_corrupt: float
    samples: int
    noise_scale: float
    window: int
    sever: str | None
    seconds: float
    model: str
    n_untraced: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["aie"] = {k: np.where(np.isnan(v), None, v.round(7)).tolist() for k, v in self.aie.items()}
        return out

    def save(self, directory: str | Path, name: str = "trace_dataset") -> tuple[Path, Path]:
        """Write `<name>.json` and `<name>.png` (atomically) into `directory`."""
        from jaxedit.trace.plot import plot_average

        directory = Path(directory)
        json_path = write_output(directory / f"{name}.json", json.dumps(self.to_dict(), indent=1).encode())
        png_path = directory / f"{name}.png"
        plot_average(self, png_path)
        return json_path, png_path

    def peak(self, kind: str, cls: str) -> tuple[int, float]:
        """Layer and value of the largest average IE of `kind` at token class `cls`."""
        column = self.aie[kind][:, self.classes.index(cls)]
        layer = int(np.nanargmax(column))
        return layer, float(column[layer])


def greedy_next_tokens(
    model: Model, rows: Sequence[Sequence[int]], *, batch: int = 32, multiple: int = 8
) -> np.ndarray:
    """The greedy next token after each tokenized prompt, in batched forwards of a few fixed shapes.

    Prompts are right-padded to multiples of `multiple` tokens and run `batch` at a time (the last
    batch is filled with copies of its first row), so a prompt set compiles one program per length
    bucket instead of one per distinct prompt length (each a few seconds on a CPU, more on a GPU).
    Right padding leaves every real token's causal computation as it is alone.
    """
    if batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    tops = np.zeros(len(rows), np.int64)
    for first in range(0, len(rows), batch):
        chunk = list(rows[first : first + batch])
        filled = chunk + [chunk[0]] * (batch - len(chunk))
        ids, mask = tok.pad(filled, tok.pad_id(model.tokenizer), side="right", multiple=multiple)
        read = np.asarray([[len(r) - 1] for r in filled], np.int32)
        logits = logits_at(model.params, model.config, ids, mask, read)[:, 0]
        tops[first : first + len(chunk)] = np.asarray(jnp.argmax(logits, axis=-1))[: len(chunk)]
    return tops


def _read_fact(
    path: Path | None, kinds: Sequence[str]
) -> tuple[dict[str, np.ndarray], float, float, float] | None:
    """A cached fact's grids and probabilities, or None when it is missing or unreadable."""
    if path is None or not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        grids = {k: np.asarray(saved["grids"][k], np.float64) for k in kinds}
        return grids, float(saved["p_clean"]), float(saved["p_corrupt"]), float(saved.get("seconds", 0.0))
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("jaxedit: ignoring unreadable trace cache file %s (%s); tracing it again", path, err)
        return None


def known_facts(
    model: Model, records: Sequence[dict], corrupt: str, n: int | None, *, batch: int = 32
) -> tuple[list[tuple[str, str, str, list[int], np.ndarray, tuple[int, int]]], int]:
    """The records the model predicts correctly, in order, up to `n` of them, and how many were read.

    A record whose subject / relation tokens cannot be located is skipped with a log line (and counts
    as read). Predictions run `batch` records at a time (`greedy_next_tokens`); reading stops at the
    record that completes `n` known facts.
    """
    kept: list[tuple[str, str, str, list[int], np.ndarray, tuple[int, int]]] = []
    considered = 0
    for first in range(0, len(records), batch):
        parsed = []
        for record in records[first : first + batch]:
            prompt, subject, answer = _record_fields(record)
            try:
                ids = tok.encode_one(model.tokenizer, prompt)
                mask, span = corrupted_tokens(model, prompt, ids, subject, corrupt)
            except InputError as err:
                log.info("skipping %r: %s", prompt, err)
                parsed.append(None)
                continue
            parsed.append((prompt, subject, answer, ids, mask, span))
        valid = [p for p in parsed if p is not None]
        tops = iter(greedy_next_tokens(model, [p[3] for p in valid], batch=batch) if valid else [])
        for fact in parsed:
            if n is not None and len(kept) >= n:
                return kept, considered
            considered += 1
            if fact is not None and next(tops) == answer_token(model, fact[2]):
                kept.append(fact)
    return kept, considered


def _record_fields(record: dict) -> tuple[str, str, str]:
    prompt = record.get("prompt") or record["template"].format(record["subject"])
    answer = record.get("attribute") or record.get("answer") or record.get("target_true")
    if isinstance(answer, dict):
        answer = answer.get("str")
    if not answer:
        raise InputError(f"record has no answer (attribute / answer / target_true): {record}")
    return prompt, record["subject"], answer


def _settings_key(**settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def common_shape(lengths_and_starts: Sequence[tuple[int, int]], bucket: int) -> tuple[int, int]:
    """The `(length, live)` padding under which `trace` runs every prompt of a set with one program.

    Each prompt is `(tokens, first corrupted token)`; `trace` pads a prompt to its bucketed length and
    gives cells to the bucketed rows from its first corrupted token on.
    """
    length = max(-(-n // bucket) * bucket for n, _ in lengths_and_starts)
    live = max(-(-(n - first) // bucket) * bucket for n, first in lengths_and_starts)
    return length, min(live, length)


def parse_shapes(text: str) -> str | int:
    """A `shapes` option from the command line: `auto`, `bucket`, `single` or a number of groups."""
    if text.isdigit() and int(text) >= 1:
        return int(text)
    if text in ("auto", "bucket", "single"):
        return text
    raise InputError(f"shapes must be 'auto', 'bucket', 'single' or a positive int, got {text!r}")


def shape_groups(
    lengths_and_starts: Sequence[tuple[int, int]], bucket: int, groups: int, n_layers: int, window: int
) -> list[tuple[int, int]]:
    """The `(length, live)` padding of each prompt when a set is traced with at most `groups` shapes.

    Prompts are grouped by bucketed length into contiguous ranges, each padded to its `common_shape`;
    the ranges minimise the total recomputed rows of the hidden-state grid programs (the work measure
    of `schedule.Plan`), by dynamic programming over the distinct bucketed lengths. One group is
    `common_shape` for every prompt; as many groups as distinct lengths is close to per-prompt buckets.
    """
    if groups < 1:
        raise InputError(f"shape groups must be at least 1, got {groups}")
    if groups == 1:
        return [common_shape(lengths_and_starts, bucket)] * len(lengths_and_starts)
    bucketed = [-(-n // bucket) * bucket for n, _ in lengths_and_starts]
    lengths = sorted(set(bucketed))
    members = {m: [p for p, b in zip(lengths_and_starts, bucketed, strict=True) if b == m] for m in lengths}

    @functools.cache
    def cost(i: int, j: int) -> float:  # lengths[i..j] as one group
        prompts = [p for m in lengths[i : j + 1] for p in members[m]]
        length, live = common_shape(prompts, bucket)
        # uncached plan: these work estimates must not evict the plans (and so the compiled programs)
        # that tracing keeps in build_plan's cache
        plan = schedule.build_plan.__wrapped__(
            "hidden", n_layers, length, live, 1, window, "code", None, None
        )
        return len(prompts) * plan.recomputed_rows()

    # best[g][j]: least cost of lengths[0..j] in at most g + 1 groups; start[g][j]: where its last
    # group starts (None: g groups already do best)
    m = len(lengths)
    best = [[cost(0, j) for j in range(m)]]
    start: list[list[int | None]] = [[0] * m]
    for g in range(1, min(groups, m)):
        row, where = list(best[g - 1]), [None] * m
        for j in range(m):
            for i in range(1, j + 1):
                value = best[g - 1][i - 1] + cost(i, j)
                if value < row[j]:
                    row[j], where[j] = value, i
        best.append(row)
        start.append(where)
    shape_of: dict[int, tuple[int, int]] = {}
    g, j = len(best) - 1, m - 1
    while j >= 0:
        first = start[g][j] if g > 0 else 0
        if first is None:
            g -= 1
            continue
        group = [q for length in lengths[first : j + 1] for q in members[length]]
        shape_of.update(dict.fromkeys(lengths[first : j + 1], common_shape(group, bucket)))
        g, j = g - 1, first - 1
    return [shape_of[b] for b in bucketed]


def trace_dataset(
    model: Model,
    records: Iterable[dict],
    *,
    n: int | None = None,
    corrupt: str = "subject",
    kinds: Sequence[str] = ("hidden", "mlp", "attn"),
    noise: Noise | str | float = Noise(),
    window: int = 10,
    sever: str | None = None,
    out_dir: str | Path | None = None,
    max_seconds: float | None = None,
    execution: Execution = Execution(),
) -> DatasetTrace:
    """Trace facts the model knows and average the indirect effects by token class.

    Args:
      records: dicts with `prompt` (or `template` + `subject`), `subject` and the answer (`attribute`,
        as in `known_1000.json`, or `answer` / `target_true`).
      n: stop after this many correctly predicted facts (default: all).
      corrupt: `subject` or `relation`.
      out_dir: where per-fact traces are cached (resumable) and the summary is written.
      max_seconds: a time budget from the call: facts not started by then are left untraced and the
        averages cover the first `n_facts` known facts (`n_untraced` says how many were left; facts
        already in `out_dir`'s cache are always used). For runs whose compile time is unknown, such as
        a first run on an accelerator: ask for many facts and average what fits.
      execution: speed and memory settings (`jaxedit.runtime.execution.Execution`); for a dataset also
        `workers` (facts traced at once by threads: on an accelerator compiles of new prompt shapes run
        in parallel on the host's cores; on a CPU keep 1) and `shapes` (`bucket` pads each prompt to
        multiples of `bucket`, 4 here by default: the least work, a CPU's choice; `single` pads every
        prompt to the set's largest shape, so each kind compiles one grid program: on an H200 one
        SmolLM2 grid program compiles in 1-3 minutes and then traces a fact in a fraction of a second;
        an int k groups prompts by length into at most k shapes, `shape_groups`).

    The other arguments are as in `trace`.

    Returns:
      A `DatasetTrace`.
    """
    if corrupt not in ("subject", "relation"):
        raise InputError(f"corrupt must be 'subject' or 'relation' for a dataset, got {corrupt!r}")
    records = list(records)
    if not records:
        raise InputError("no records to trace")
    noise = Noise.of(noise)
    samples, seed = noise.samples, noise.seed
    ex = execution.resolved()
    bucket, shapes, workers = ex.bucket_or(4), ex.shapes, ex.workers
    if max_seconds is not None and not max_seconds > 0:
        raise InputError(f"max_seconds must be a positive number of seconds, got {max_seconds!r}")
    start = time.perf_counter()
    kept, considered = known_facts(model, records, corrupt, n)
    filtered = considered - len(kept)
    log.info("tracing %d facts; %d of %d considered were filtered out", len(kept), filtered, considered)
    if not kept:
        raise InputError("the model predicts none of the given facts correctly: nothing to trace")
    pads: list[tuple[int, int] | None] = [None] * len(kept)
    if shapes != "bucket":
        groups = 1 if shapes == "single" else shapes
        starts = [(len(ids), int(np.argmax(mask))) for *_, ids, mask, _ in kept]
        pads = list(shape_groups(starts, bucket, groups, model.config.n_layers, window))
    scale = noise_scale_for(model, [(ids, mask) for *_, ids, mask, _ in kept], noise.scale)
    filter_seconds = time.perf_counter() - start

    cache = Path(out_dir) / "facts" if out_dir is not None else None
    key = _settings_key(
        model=model.source, fingerprint=model.fingerprint, corrupt=corrupt, kinds=list(kinds), samples=samples, scale=scale, window=window,
        sever=sever, seed=seed,
    )  # fmt: skip
    classes = list(RELATION_CLASSES if corrupt == "relation" else SUBJECT_CLASSES)
    sums = {k: np.zeros((model.config.n_layers, len(classes))) for k in kinds}
    counts = np.zeros(len(classes), int)
    p_clean, p_corrupt = [], []

    deadline = None if max_seconds is None else start + max_seconds

    def path_of(index: int) -> Path | None:
        """The fact's file: named by the settings and by the fact itself (prompt, subject, answer)."""
        prompt, subject, answer, *_ = kept[index]
        return cache / f"{key}-{digest([prompt, subject, answer], 12)}.json" if cache is not None else None

    def run(index: int, run_kinds: Sequence[str]) -> TraceResult:
        prompt, subject, answer, *_ = kept[index]
        fact_execution = dataclasses.replace(
            ex, bucket=bucket, pad_to=pads[index], threads=1 if workers > 1 else ex.threads
        )  # facts side by side fill the cores
        return trace(
            model, prompt, subject=subject, corrupt=corrupt, kinds=run_kinds, noise=Noise(scale, samples, seed),
            window=window, answer=answer, sever=sever, execution=fact_execution,
        )  # fmt: skip

    def traced(index: int) -> tuple[dict[str, np.ndarray], float, float, float] | None:
        path = path_of(index)
        saved = _read_fact(path, kinds)
        if saved is not None:
            return saved
        if deadline is not None and time.perf_counter() > deadline:
            return None
        result = run(index, kinds)
        if path is not None:  # facts/ is jaxedit's own: no ownership record per file
            atomic_write_bytes(path, json.dumps(result.to_dict()).encode())
        return result.grids, result.p_clean, result.p_corrupt, result.seconds

    todo = [i for i in range(len(kept)) if _read_fact(path_of(i), kinds) is None]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        if workers > 1 and shapes != "bucket" and todo:
            # the facts of a shape group run the same programs: compile every (group, kind) program at
            # once (XLA compiles on the host's cores and concurrent calls of a program being compiled
            # wait for it), not one after the other as the first facts reach them
            firsts = {pads[i]: i for i in reversed(todo)}
            if len(firsts) * len(kinds) > 1:
                warm = [pool.submit(run, i, (kind,)) for i in firsts.values() for kind in kinds]
                for future in warm:
                    future.result()
        results = list(
            tqdm(
                pool.map(traced, range(len(kept))),
                total=len(kept),
                desc=f"tracing ({corrupt})",
                disable=not ex.progress,
            )
        )
    done = next((i for i, r in enumerate(results) if r is None), len(results))
    results = results[:done]  # the first facts in order: a fact after a skipped one is left out too
    if done == 0:
        raise InputError(f"the time budget of {max_seconds} s ran out before the first fact was traced")
    if done < len(kept):
        log.warning(
            "time budget of %.0f s spent: averaging the first %d of %d known facts",
            max_seconds,
            done,
            len(kept),
        )
    for (grids, pc, pk, _), (_, _, _, ids, _, span) in zip(results, kept[:done], strict=True):
        p_clean.append(pc)
        p_corrupt.append(pk)
        first_real = sum(tok.special_positions(model.tokenizer, ids)[: span[0]])
        members = token_classes(len(ids), span, corrupt, first_real)
        for c, cls in enumerate(classes):
            if members[cls]:
                counts[c] += 1
                for kind in kinds:
                    sums[kind][:, c] += (grids[kind][:, members[cls]] - pk).mean(axis=1)
    with np.errstate(invalid="ignore"):
        aie = {k: np.where(counts > 0, v / np.maximum(counts, 1), np.nan) for k, v in sums.items()}
    summary = DatasetTrace(
        corruption=corrupt,
        classes=classes,
        kinds=list(kinds),
        aie=aie,
        counts=counts.tolist(),
        n_facts=done,
        n_considered=considered,
        n_filtered=filtered,
        n_untraced=len(kept) - done,
        p_clean=float(np.mean(p_clean)),
        p_corrupt=float(np.mean(p_corrupt)),
        samples=samples,
        noise_scale=scale,
        window=window,
        sever=sever,
        seconds=filter_seconds + sum(r[3] for r in results),
        model=model.source,
    )
    if out_dir is not None:
        summary.save(out_dir)
    return summary


def suggest_edit_layer(
    model: Model,
    records: Iterable[dict] | DatasetTrace,
    *,
    position: str = "last_subject",
    **kwargs: Any,
) -> tuple[int, DatasetTrace]:
    """The layer of peak average MLP indirect effect, for editing defaults (docs/methods.md §5, §8).

    `position="last_subject"` (ROME, subject corruption) or `"last_relation"` (RETS, relation
    corruption). `records` may be a finished `DatasetTrace` with the `mlp` kind. Returns the layer and
    the evidence.
    """
    if position not in ("last_subject", "last_relation"):
        raise InputError(f"position must be 'last_subject' or 'last_relation', got {position!r}")
    corrupt, cls = ("subject", "last subject token") if position == "last_subject" else ("relation", "lr")
    if isinstance(records, DatasetTrace):
        summary = records
        if summary.corruption != corrupt or "mlp" not in summary.aie:
            raise InputError(f"{position} needs an mlp trace with {corrupt} corruption")
    else:
        summary = trace_dataset(model, records, corrupt=corrupt, kinds=("mlp",), **kwargs)
    layer, _ = summary.peak("mlp", cls)
    return layer, summary
