"""jaxedit's caches: where they live, how an entry is keyed, written and checked when read back.

Everything cached (key statistics, their checkpoints, context templates, RETS subject constraints,
optimised edit targets) lives under one root, `$JAXEDIT_CACHE` (default `~/.cache/jaxedit`), which
belongs to jaxedit: deleting it, or any folder in it, only costs recomputation. The compiled-program
cache is separate (`jaxedit.runtime.compile_cache`).

An entry is named by `digest(key)`, the hash of everything that produced it (the model's weight
fingerprint, layers, settings, data), and carries that key inside itself, written with the data in one
atomic rename: `.npz` entries hold a `__meta__` record, `.json` entries are `{"meta": ..., "value":
...}`. `load_npz` / `load_json` return None for a missing entry, and for an entry that cannot be read
(truncated, not an archive, a zip member failing its CRC check, garbage JSON) or whose key differs from
the one asked for: they log a warning naming the file, and the caller computes the entry again and
writes it over the bad one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxedit.io.files import atomic_write_bytes

log = logging.getLogger(__name__)

META = "__meta__"


def cache_root() -> Path:
    """`$JAXEDIT_CACHE`, else `~/.cache/jaxedit`."""
    return Path(os.environ.get("JAXEDIT_CACHE") or Path.home() / ".cache" / "jaxedit")


def digest(value: Any, length: int = 20) -> str:
    """A stable hex digest of a JSON-ready value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def _unusable(path: Path, reason: str) -> None:
    log.warning("jaxedit: cache file %s is unusable (%s); computing it again", path, reason)


def save_npz(path: str | Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Write `arrays` and the JSON record `meta` as one `.npz`, atomically."""
    if META in arrays:
        raise ValueError(f"{META} is reserved for the entry's record")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{META: np.asarray(json.dumps(dict(meta), sort_keys=True))})
    return atomic_write_bytes(Path(path), buffer.getvalue())


def load_npz(
    path: str | Path, expect: Mapping[str, Any] | None = None, *, required: tuple[str, ...] = ()
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """`(arrays, meta)` of an entry written by `save_npz`, or None when it is missing or unusable.

    Args:
      expect: fields the record must hold with these values (the entry's key); any difference makes
        the entry unusable.
      required: arrays the entry must hold.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}  # reads every member: CRC-checked
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        _unusable(path, f"{type(err).__name__}: {err}")
        return None
    try:
        meta = json.loads(str(arrays.pop(META)))
    except (KeyError, ValueError):
        _unusable(path, "no readable record of what produced it")
        return None
    missing = [name for name in required if name not in arrays]
    if missing:
        _unusable(path, f"arrays {missing} are missing")
        return None
    return None if _foreign(path, meta, expect) else (arrays, meta)


def save_json(path: str | Path, value: Any, meta: Mapping[str, Any]) -> Path:
    """Write `{"meta": meta, "value": value}` atomically."""
    text = json.dumps({"meta": dict(meta), "value": value}, indent=1, sort_keys=True)
    return atomic_write_bytes(Path(path), text.encode())


def load_json(path: str | Path, expect: Mapping[str, Any] | None = None) -> Any | None:
    """The value of an entry written by `save_json`, or None when missing or unusable (see `load_npz`)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text())
        meta, value = entry["meta"], entry["value"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        _unusable(path, f"{type(err).__name__}: {err}")
        return None
    return None if _foreign(path, meta, expect) else value


def _foreign(path: Path, meta: Mapping[str, Any], expect: Mapping[str, Any] | None) -> bool:
    """Whether the entry's record differs from the key asked for (logged as unusable if so)."""
    wrong = sorted(k for k, v in (expect or {}).items() if meta.get(k) != _plain(v))
    if wrong:
        _unusable(path, f"made for other {', '.join(wrong)}")
    return bool(wrong)


def _plain(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples as lists)."""
    return json.loads(json.dumps(value, default=str))
