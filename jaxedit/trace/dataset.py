"""Average causal traces over a prompt set by token class (METHODS.md §1; paper 003 Fig. 3, 000 Table 1).

`trace_dataset` keeps the facts the model predicts correctly (its greedy first token is the answer's
first token), traces each with the answer as readout, and averages the indirect effect
`IE = P_restored - P_corrupt` per layer over the tokens of each class:

- subject corruption (paper 003): first / middle / last subject token, first subsequent token,
  further tokens, last token;
- relation corruption (paper 000 Table 1): `rp` relation tokens before the subject, `fs` / `ms` / `ls`
  first / middle / last subject token, `fr` / `mr` / `lr` first / middle / last relation token after it.

A class with no token in a prompt (a one-token subject has no middle) is left out of that prompt's
average. Per-fact traces are written to `out_dir/facts/` as they finish, so an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxedit import tokens as tok
from jaxedit.checkpoints import atomic_write_bytes
from jaxedit.loading import Model
from jaxedit.model import forward
from jaxedit.trace.api import answer_token, corrupted_tokens, noise_scale_for, trace

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
      n_facts: traced facts; n_filtered: facts dropped because the model got them wrong.
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

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["aie"] = {k: np.where(np.isnan(v), None, v.round(7)).tolist() for k, v in self.aie.items()}
        return out

    def save(self, directory: str | Path, name: str = "trace_dataset") -> tuple[Path, Path]:
        """Write `<name>.json` and `<name>.png` (atomically) into `directory`."""
        from jaxedit.trace.plot import plot_average

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        json_path = directory / f"{name}.json"
        atomic_write_bytes(json_path, json.dumps(self.to_dict(), indent=1).encode())
        png_path = directory / f"{name}.png"
        plot_average(self, png_path)
        return json_path, png_path

    def peak(self, kind: str, cls: str) -> tuple[int, float]:
        """Layer and value of the largest average IE of `kind` at token class `cls`."""
        column = self.aie[kind][:, self.classes.index(cls)]
        layer = int(np.nanargmax(column))
        return layer, float(column[layer])


def predicts_correctly(model: Model, prompt: str, answer: str) -> bool:
    """The model's greedy next token is the first token of the answer."""
    ids = np.asarray([tok.encode_one(model.tokenizer, prompt)])
    top = int(jnp.argmax(forward(model.params, model.config, ids).logits[0, -1]))
    return top == answer_token(model, answer)


def _record_fields(record: dict) -> tuple[str, str, str]:
    prompt = record.get("prompt") or record["template"].format(record["subject"])
    answer = record.get("attribute") or record.get("answer") or record.get("target_true")
    if isinstance(answer, dict):
        answer = answer.get("str")
    if not answer:
        raise ValueError(f"record has no answer (attribute / answer / target_true): {record}")
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


def trace_dataset(
    model: Model,
    records: Iterable[dict],
    *,
    n: int | None = None,
    corrupt: str = "subject",
    kinds: Sequence[str] = ("hidden", "mlp", "attn"),
    samples: int = 10,
    noise: str | float = "3sigma",
    window: int = 10,
    sever: str | None = None,
    seed: int = 0,
    bucket: int = 4,
    out_dir: str | Path | None = None,
    progress: bool = True,
    workers: int = 1,
    segments: int | str | None = "auto",
    shapes: str = "auto",
) -> DatasetTrace:
    """Trace facts the model knows and average the indirect effects by token class.

    Args:
      records: dicts with `prompt` (or `template` + `subject`), `subject` and the answer (`attribute`,
        as in `known_1000.json`, or `answer` / `target_true`).
      n: stop after this many correctly predicted facts (default: all).
      corrupt: `subject` or `relation`.
      out_dir: where per-fact traces are cached (resumable) and the summary is written.
      workers: facts traced concurrently by threads. On an accelerator, compiling the grid programs of
        new prompt shapes dominates and XLA compiles in parallel on the host's cores; on a CPU keep 1.
      shapes: `bucket` pads each prompt to multiples of `bucket` (the least work: a CPU's choice);
        `single` pads every prompt to the set's largest bucketed shape, so each kind compiles one grid
        program (on an H200 one SmolLM2 grid program compiles in 1-3 minutes and then traces a fact
        in a fraction of a second); `auto`: `bucket` on a CPU, `single` on accelerators.
      Other arguments as in `trace`.

    Returns:
      A `DatasetTrace`.
    """
    if corrupt not in ("subject", "relation"):
        raise ValueError(f"corrupt must be 'subject' or 'relation' for a dataset, got {corrupt!r}")
    records = list(records)
    if not records:
        raise ValueError("no records to trace")
    start = time.perf_counter()
    kept: list[tuple[str, str, str, list[int], np.ndarray, tuple[int, int]]] = []
    considered = 0
    for record in records:
        if n is not None and len(kept) >= n:
            break
        considered += 1
        prompt, subject, answer = _record_fields(record)
        try:
            ids = tok.encode_one(model.tokenizer, prompt)
            mask, span = corrupted_tokens(model, prompt, ids, subject, corrupt)
        except ValueError as err:
            log.info("skipping %r: %s", prompt, err)
            continue
        if predicts_correctly(model, prompt, answer):
            kept.append((prompt, subject, answer, ids, mask, span))
    filtered = considered - len(kept)
    log.info("tracing %d facts; %d of %d considered were filtered out", len(kept), filtered, considered)
    if not kept:
        raise ValueError("the model predicts none of the given facts correctly: nothing to trace")
    if shapes == "auto":
        shapes = "bucket" if jax.default_backend() == "cpu" else "single"
    pad_to = None
    if shapes == "single":
        pad_to = common_shape([(len(ids), int(np.argmax(mask))) for *_, ids, mask, _ in kept], bucket)
    elif shapes != "bucket":
        raise ValueError(f"shapes must be 'auto', 'bucket' or 'single', got {shapes!r}")
    scale = noise_scale_for(model, [(ids, mask) for *_, ids, mask, _ in kept], noise)
    filter_seconds = time.perf_counter() - start

    cache = Path(out_dir) / "facts" if out_dir is not None else None
    key = _settings_key(
        model=model.source, corrupt=corrupt, kinds=list(kinds), samples=samples, scale=scale, window=window,
        sever=sever, seed=seed,
    )  # fmt: skip
    classes = list(RELATION_CLASSES if corrupt == "relation" else SUBJECT_CLASSES)
    sums = {k: np.zeros((model.config.n_layers, len(classes))) for k in kinds}
    counts = np.zeros(len(classes), int)
    p_clean, p_corrupt = [], []

    def traced(index: int) -> tuple[dict[str, np.ndarray], float, float, float]:
        prompt, subject, answer, *_ = kept[index]
        path = cache / f"{key}-{index:05d}.json" if cache is not None else None
        if path is not None and path.exists():
            saved = json.loads(path.read_text())
            grids = {k: np.asarray(saved["grids"][k]) for k in kinds}
            return grids, saved["p_clean"], saved["p_corrupt"], float(saved.get("seconds", 0.0))
        result = trace(
            model, prompt, subject=subject, corrupt=corrupt, kinds=kinds, samples=samples, noise=scale,
            window=window, answer=answer, sever=sever, seed=seed, bucket=bucket, pad_to=pad_to,
            segments=segments,
        )  # fmt: skip
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            result.save_json(path)
        return result.grids, result.p_clean, result.p_corrupt, result.seconds

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            tqdm(
                pool.map(traced, range(len(kept))),
                total=len(kept),
                desc=f"tracing ({corrupt})",
                disable=not progress,
            )
        )
    for (grids, pc, pk, _), (_, _, _, ids, _, span) in zip(results, kept, strict=True):
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
        n_facts=len(kept),
        n_considered=considered,
        n_filtered=filtered,
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
    """The layer of peak average MLP indirect effect, for editing defaults (METHODS.md §5, §8).

    `position="last_subject"` (ROME, subject corruption) or `"last_relation"` (RETS, relation
    corruption). `records` may be a finished `DatasetTrace` with the `mlp` kind. Returns the layer and
    the evidence.
    """
    if position not in ("last_subject", "last_relation"):
        raise ValueError(f"position must be 'last_subject' or 'last_relation', got {position!r}")
    corrupt, cls = ("subject", "last subject token") if position == "last_subject" else ("relation", "lr")
    if isinstance(records, DatasetTrace):
        summary = records
        if summary.corruption != corrupt or "mlp" not in summary.aie:
            raise ValueError(f"{position} needs an mlp trace with {corrupt} corruption")
    else:
        summary = trace_dataset(model, records, corrupt=corrupt, kinds=("mlp",), **kwargs)
    layer, _ = summary.peak("mlp", cls)
    return layer, summary
