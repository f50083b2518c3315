"""A resumable store of optimised edit targets, for runs that edit thousands of facts (docs/methods.md §4, §6).

A request's target (`δ`, `m0`, PMET's `δa`) depends on the model's weights, the edited layer, the
context templates, the target settings and the request itself, never on the other requests of its
batch. So experiments that edit the same records with the same settings (scaling curves, mass editing,
λ sweeps, ablations) optimise each target once, and an interrupted run of thousands resumes from the
last group it finished.

The store is a folder `<root>/<digest of the key>/` (root: `$JAXEDIT_CACHE/targets`) whose `key.json`
holds the key: the weights' fingerprint, the layer, the templates and every target setting. It holds one
`.npz` per group of up to `group` requests (named by its first request's digest), each written
atomically with the digests of its requests and the seconds its optimisation took; an unreadable group
file is removed and its requests optimised again. Missing requests are optimised in `chunk_order`
(similar lengths together), so a rerun after an interruption cuts the same groups as an uninterrupted
run and gets the same targets.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jaxedit.edit.memit import MemitHparams, default_layers, memit_targets
from jaxedit.edit.requests import Request, as_request
from jaxedit.edit.targets import Targets, build_batch, chunk_order
from jaxedit.errors import InputError
from jaxedit.io.cache import cache_root, digest, load_npz, save_npz
from jaxedit.io.files import atomic_write_bytes
from jaxedit.io.loading import Model

log = logging.getLogger(__name__)

KEPT = ("delta", "m0", "delta_attn", "nll", "steps")  # what `memit` reads of `Targets`


def store_key(model: Model, hp: MemitHparams, templates: Sequence[str]) -> dict:
    """Everything a stored target depends on besides its request."""
    layers = hp.layers if hp.layers is not None else default_layers(model)
    return {
        "fingerprint": model.fingerprint,
        "model": model.source,
        "layer": int(max(layers)),
        "templates": list(templates),
        "targets": json.loads(json.dumps(dataclasses.asdict(hp.targets))),
    }


def store_folder(
    model: Model, hp: MemitHparams, templates: Sequence[str], root: str | Path | None = None
) -> Path:
    """The store's folder for these settings (`<root>/<digest>/`), claimed with its `key.json`; a folder
    whose recorded key differs is refused."""
    key = store_key(model, hp, templates)
    folder = Path(root) if root is not None else cache_root() / "targets"
    folder = folder / digest(key, 16)
    record = folder / "key.json"
    if record.exists():
        try:
            saved = json.loads(record.read_text())
        except (OSError, ValueError):
            saved = None
        if saved != key:
            raise InputError(f"target store {folder} records another key in {record}; remove the folder")
    else:
        atomic_write_bytes(record, json.dumps(key, indent=1).encode())
    return folder


def _request_digest(request: Request) -> str:
    return digest(request.to_dict(), 16)


def _stored_rows(folder: Path) -> tuple[dict[str, dict[str, np.ndarray]], float, int]:
    """Request digest -> kept arrays from every readable group file, with the groups' total seconds and
    edits; unreadable group files are removed (their requests are optimised again)."""
    rows: dict[str, dict[str, np.ndarray]] = {}
    seconds, edits = 0.0, 0
    for path in sorted(folder.glob("*.npz")):
        entry = load_npz(path, required=("delta", "m0"))
        names = entry[1].get("requests") if entry is not None else None
        if entry is None or not isinstance(names, list) or len(names) != len(entry[0]["delta"]):
            path.unlink(missing_ok=True)
            continue
        arrays, meta = entry
        for row, name in enumerate(names):
            rows[str(name)] = {k: arrays[k][row] for k in KEPT if k in arrays}
        seconds += float(meta.get("seconds", float("nan")))
        edits += len(names)
    return rows, seconds, edits


def stored_time(
    model: Model, hp: MemitHparams, templates: Sequence[str], root: str | Path | None = None
) -> tuple[int, float]:
    """Edits in the store of these settings and the seconds their optimisation took."""
    _, seconds, edits = _stored_rows(store_folder(model, hp, templates, root))
    return edits, seconds


def stored_targets(
    model: Model,
    requests: Sequence[Request | dict],
    hp: MemitHparams,
    templates: Sequence[str],
    root: str | Path | None = None,
    *,
    group: int = 100,
    progress: bool = True,
) -> Targets:
    """`memit_targets(model, requests, hp, templates)`, each request optimised once and kept in the store
    (see the module docstring). Kept: what `memit` reads (δ, m0, PMET's δa, the final NLL and step
    count); the keys and loss histories come back as zero-width arrays."""
    if group < 1:
        raise InputError(f"group must be at least 1, got {group}")
    requests = [as_request(r) for r in requests]
    if not requests:
        raise InputError("no edit requests")
    folder = store_folder(model, hp, templates, root)
    stored, _, _ = _stored_rows(folder)
    names = [_request_digest(r) for r in requests]
    first_of = {name: i for i, name in reversed(list(enumerate(names)))}
    missing = [i for name, i in first_of.items() if name not in stored]
    if missing:
        todo = [requests[i] for i in missing]
        batch = build_batch(model, todo, templates, hp.targets.kl_prompt, hp.targets.key_token)
        missing = [missing[j] for j in chunk_order(batch, len(todo))]
    groups = [missing[first : first + group] for first in range(0, len(missing), group)]
    bar = tqdm(total=len(missing), desc="targets", unit="edit", disable=not progress or len(groups) < 2)
    for members in groups:
        start = time.perf_counter()
        fresh = memit_targets(model, [requests[i] for i in members], hp, templates=templates, progress=False)
        arrays = {k: getattr(fresh, k) for k in KEPT if getattr(fresh, k) is not None}
        meta = {"requests": [names[i] for i in members], "seconds": time.perf_counter() - start}
        save_npz(folder / f"{names[members[0]]}.npz", arrays, meta)
        for row, i in enumerate(members):
            stored[names[i]] = {k: v[row] for k, v in arrays.items()}
        bar.update(len(members))
    bar.close()
    kept = {k: np.stack([stored[name][k] for name in names]) for k in KEPT if k in stored[names[0]]}
    empty = np.zeros((len(names), 0), np.float32)
    return Targets(key=empty, key_mean=empty, loss=empty, **kept)
