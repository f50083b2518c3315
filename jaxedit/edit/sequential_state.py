"""A sequential editing run saved after every batch, so that a run of thousands of edits resumes where it
stopped (AlphaEdit's 2,000-edit protocol, Fang et al., 2025, §4, takes hours on a CPU).

A checkpoint is a folder of jaxedit's own files (`jaxedit.io.files.write_owned`), rewritten as one set
after each batch: the run's journal (`journal.json`, `deltas.safetensors`: `EditJournal.files`), the
running `K_pᵀK_p` of the earlier batches' keys (`earlier_keys.npz`) and `sequential.json`: the key of
everything that produced the run (model, method, settings, statistics, templates, batch size,
`keep_keys`), the digest of each batch's requests, and the per-batch records and probes so far. A
resume with another key, or with other requests in the batches already done, is refused; a longer
stream than the saved one continues after its last batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxedit.edit.journal import EditJournal
from jaxedit.edit.requests import Request
from jaxedit.edit.stats import KeyStats
from jaxedit.errors import InputError
from jaxedit.io.cache import digest
from jaxedit.io.files import write_owned
from jaxedit.io.loading import Model

FORMAT = 1
RECORD = "sequential.json"
KEYS = "earlier_keys.npz"


@dataclasses.dataclass
class SavedRun:
    """What a checkpoint restores: the journal on the unedited model and the run's bookkeeping."""

    journal: EditJournal
    earlier_keys: dict[int, np.ndarray]
    records: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    editing_seconds: float


def statistics_digest(stats: Mapping[int, KeyStats | np.ndarray]) -> str:
    """The statistics by layer: each `KeyStats`' record of its source and token count (as AlphaEdit's
    projector cache keys them), or a raw matrix's bytes."""

    def one(s: KeyStats | np.ndarray) -> Any:
        if isinstance(s, KeyStats):
            return {"stats": s.meta, "tokens": s.tokens}
        return hashlib.sha256(np.ascontiguousarray(s, np.float32).tobytes()).hexdigest()

    return digest({str(layer): one(s) for layer, s in sorted(stats.items())})


def run_key(
    model: Model,
    method: str,
    batch_size: int,
    hp: Any,
    stats: Mapping[int, KeyStats | np.ndarray],
    templates: Sequence[str],
    keep_keys: bool,
) -> dict[str, Any]:
    """Everything that produced a sequential run besides its requests."""
    return {
        "format": FORMAT, "model": model.base_fingerprint, "method": method, "batch_size": batch_size,
        "keep_keys": keep_keys, "hparams": digest(dataclasses.asdict(hp)), "templates": digest(list(templates)),
        "statistics": statistics_digest(stats),
    }  # fmt: skip


def batch_digest(batch: Sequence[Request]) -> str:
    return digest([r.to_dict() for r in batch])


def save_run(
    directory: str | Path,
    key: Mapping[str, Any],
    journal: EditJournal,
    batches: Sequence[Sequence[Request]],
    earlier_keys: Mapping[int, np.ndarray],
    records: Sequence[dict[str, Any]],
    probes: Sequence[dict[str, Any]],
    editing_seconds: float,
) -> Path:
    """Write the run after `len(records)` batches of `batches` as one set of owned files."""
    buffer = io.BytesIO()
    np.savez(buffer, **{str(layer): k for layer, k in earlier_keys.items()})
    record = {
        **key, "batches_done": len(records), "batch_digests": [batch_digest(b) for b in batches[: len(records)]],
        "entries": [d.id for d in journal.model.edits], "records": list(records), "probes": list(probes),
        "editing_seconds": editing_seconds,
    }  # fmt: skip
    files = {**journal.files(), KEYS: buffer.getvalue(), RECORD: json.dumps(record, indent=1).encode()}
    return write_owned(directory, files, what="the sequential run's checkpoint")


def load_run(
    directory: str | Path, key: Mapping[str, Any], model: Model, batches: Sequence[Sequence[Request]]
) -> SavedRun | None:
    """The run saved in `directory`, or None when there is none; `InputError` (one line) when it was made
    with another key, on other requests, or is inconsistent."""
    directory = Path(directory)
    path = directory / RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        done, digests = int(record["batches_done"]), list(record["batch_digests"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path} is not a readable sequential checkpoint ({err})") from None
    changed = sorted(name for name, value in key.items() if record.get(name) != value)
    if changed:
        raise InputError(
            f"checkpoint {directory} is of another run (its {', '.join(changed)} differ); "
            "give another folder or remove this one"
        )
    if done > len(batches) or digests != [batch_digest(b) for b in batches[:done]]:
        raise InputError(
            f"checkpoint {directory} edited other requests in its first {done} batches than these; "
            "give another folder or remove this one"
        )
    journal = EditJournal.load(directory, model)
    if [d.id for d in journal.model.edits] != record.get("entries"):
        raise InputError(f"checkpoint {directory}: its journal does not match {RECORD}; remove the folder")
    with np.load(directory / KEYS) as arrays:
        earlier = {int(layer): np.asarray(arrays[layer]) for layer in arrays.files}
    return SavedRun(
        journal, earlier, list(record["records"]), list(record["probes"]), float(record["editing_seconds"])
    )
