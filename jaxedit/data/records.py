"""Records (one dict per fact, case or text) from any source a user has them in, read by `datasets`.

Every benchmark and fact reader of jaxedit (CounterFact in both layouts, zsRE in both, `known_1000`,
KnowEdit, the lens facts) takes what `read_records` takes:

- a local file in a format `datasets` reads: `.json` (a list of records, records keyed by id, or JSON
  lines), `.jsonl`,
  `.parquet`, `.arrow`, `.csv` (flat records only);
- a dataset directory written by `datasets.Dataset.save_to_disk` (or a `DatasetDict`'s, one split);
- a `datasets.Dataset` or `datasets.IterableDataset` already in memory, or a list of dicts;
- the name of a dataset in the local Hugging Face cache (`NAME`, `NAME:CONFIG`, `NAME:CONFIG:SPLIT`),
  read offline.

Nothing is downloaded. A JSON list and JSON lines are parsed directly (the common cases, and the layouts
that keep CounterFact's nested records as they are written); the other formats go through `datasets`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jaxedit.errors import InputError

BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
RECORD_SUFFIXES = (*BUILDERS, ".arrow")  # the files `read_records` reads


def single_split(dataset: Any, where: str) -> Any:
    """`dataset` itself, or the one split of a `DatasetDict` / `IterableDatasetDict` (several splits: an
    `InputError` naming them)."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict | datasets.IterableDatasetDict):
        if len(dataset) != 1:
            raise InputError(f"{where} holds splits {sorted(dataset)}: pass one (dataset['train'])")
        dataset = next(iter(dataset.values()))
    return dataset


def _from_dataset(dataset: Any, where: str) -> list[dict[str, Any]]:
    return [dict(row) for row in single_split(dataset, where)]


def _from_path(path: Path) -> list[dict[str, Any]]:
    import datasets

    if path.is_dir():
        try:
            return _from_dataset(datasets.load_from_disk(str(path)), str(path))
        except FileNotFoundError as err:
            raise InputError(f"{path} is a folder but not a saved dataset ({err})") from err
    suffix = path.suffix.lower()
    if suffix == ".jsonl":  # JSON lines, parsed directly (nested records kept as written, no cache)
        try:
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise InputError(f"cannot read records from {path}: {err}") from err
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = None  # JSON lines under a .json name
        if isinstance(data, list):
            return data
        if isinstance(data, dict):  # records keyed by id
            if data and all(isinstance(v, dict) for v in data.values()):
                return list(data.values())
            raise InputError(f"{path} holds one JSON object, not a list of records")
    if suffix == ".arrow":
        return _from_dataset(datasets.Dataset.from_file(str(path)), str(path))
    if suffix not in BUILDERS:
        raise InputError(
            f"{path}: records are read from {sorted([*BUILDERS, '.arrow'])} files or dataset folders"
        )
    try:
        loaded = datasets.load_dataset(BUILDERS[suffix], data_files=str(path), split="train")
    except Exception as err:  # datasets raises many kinds for a malformed file
        raise InputError(f"cannot read records from {path}: {str(err).splitlines()[0]}") from err
    return _from_dataset(loaded, str(path))


def read_records(source: str | Path | Iterable[dict[str, Any]] | Any) -> list[dict[str, Any]]:
    """The records of `source` as a list of dicts (see the module docstring); an empty source or one
    that is not there is a one-line `InputError`."""
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.exists() and isinstance(source, str):
            from jaxedit.data.corpus import load_cached_dataset, looks_like_path

            if not looks_like_path(source):  # a dataset's name: the local Hugging Face cache, offline
                records = _from_dataset(load_cached_dataset(source, "records"), source)
                return _checked(records, source)
        if not path.exists():
            raise InputError(f"no such file or dataset folder: {path}")
        records = _from_path(path)
        where = str(path)
    elif isinstance(source, list):
        records, where = source, "the given records"
    else:
        import datasets

        if not isinstance(source, datasets.Dataset | datasets.IterableDataset | datasets.DatasetDict):
            raise InputError(
                f"records come from a path, a list of dicts or a datasets.Dataset, got {type(source).__name__}"
            )
        records, where = _from_dataset(source, type(source).__name__), type(source).__name__
    return _checked(records, where)


def _checked(records: list, where: str) -> list[dict[str, Any]]:
    if not records:
        raise InputError(f"{where} holds no records")
    if not all(isinstance(r, dict) for r in records):
        raise InputError(f"{where} must hold records (JSON objects / rows), not {type(records[0]).__name__}")
    return records
