"""Text corpora streamed through Hugging Face `datasets`, in bounded memory (key statistics' input).

`open_corpus(source)` takes:

- a local file in a format `datasets` reads (`jaxedit.data.records.BUILDERS` and `.arrow`): `.jsonl` /
  `.json` (records with a `text` field, or a JSON list of strings), `.parquet`, `.arrow`, `.csv` (a
  `text` column); a file of any other suffix (`.txt`, `.raw`, ...) holds one text per blank-line
  separated block (`datasets`' `text` builder by paragraph; each block stripped);
- a folder written by `datasets.Dataset.save_to_disk` (or a `DatasetDict`'s with one split);
- any other folder: every file in it (recursively, sorted by path, hidden names and `.md` files left
  out), each read as above, one after the other;
- a `datasets.Dataset`, `IterableDataset` or one-split `DatasetDict`;
- the name of a dataset in the local Hugging Face cache, `NAME`, `NAME:CONFIG` or `NAME:CONFIG:SPLIT`
  (default: the only split, else `train`). Always offline (`HF_DATASETS_OFFLINE` / `HF_HUB_OFFLINE` are
  set while jaxedit loads): nothing is ever downloaded, and a name that is not cached is refused.

A `Corpus` is re-iterable: each pass opens a fresh stream and yields one text at a time (files are
read in chunks of `CHUNK_BYTES`, datasets in batches of `BATCH_ROWS` rows), so a pass holds a bounded
amount of text whatever the corpus size; a JSON file holding one list is the exception, parsed whole
by `datasets`. Empty and whitespace-only texts are skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

from jaxedit.data.records import BUILDERS, single_split
from jaxedit.errors import InputError

CHUNK_BYTES = 1 << 20  # what `datasets` reads from a file at a time (its transient memory is ~20x this)
BATCH_ROWS = 256  # rows taken from a dataset at a time
FILE_BUILDERS = {**BUILDERS, ".arrow": "arrow"}  # any other suffix: the `text` builder


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Texts that can be streamed any number of times: `iter(corpus)` opens a fresh pass.

    Attributes:
      name: what the corpus is (a resolved path, `hf:NAME[:CONFIG][:SPLIT]`, a dataset's fingerprint),
        the default corpus id of key statistics.
      stream: opens one pass over the texts.
    """

    name: str
    stream: Callable[[], Iterator[str]]

    def __iter__(self) -> Iterator[str]:
        return self.stream()


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hugging Face `datasets` and `huggingface_hub` in offline mode for the duration (the environment
    variables and the flags both libraries read at import), restored afterwards."""
    import datasets.config
    import huggingface_hub.constants as hub

    names = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    saved_env = {k: os.environ.get(k) for k in names}
    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE)
    os.environ.update(dict.fromkeys(names, "1"))
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _texts(values: Iterable[Any], where: str, field: str, strip: bool) -> Iterator[str]:
    """The non-blank strings of `values` (stripped when `strip`); None is skipped, other types refused."""
    for value in values:
        if value is None:
            continue
        if not isinstance(value, str):
            raise InputError(f"{where}: {field!r} holds {type(value).__name__} values, not text")
        text = value.strip() if strip else value
        if text.strip():
            yield text


def _rows(dataset: Any, where: str, field: str, strip: bool = False) -> Iterator[str]:
    """The texts of `dataset`'s `field` column, `BATCH_ROWS` rows at a time; a read error of `datasets`
    (a malformed file met while streaming) as a one-line `InputError`."""
    columns = dataset.column_names
    if columns is not None and field not in columns:
        raise InputError(f"{where} has no {field!r} column (columns: {', '.join(map(str, columns))})")
    try:
        for batch in dataset.select_columns([field]).iter(batch_size=BATCH_ROWS):
            yield from _texts(batch[field], where, field, strip)
    except InputError:
        raise
    except Exception as err:  # datasets raises many kinds for a malformed file
        raise InputError(f"cannot read corpus {where}: {_first_line(err)}") from err


def _builder(path: Path) -> str:
    return FILE_BUILDERS.get(path.suffix.lower(), "text")


def _stream_files(files: list[Path], builder: str, field: str) -> Iterator[str]:
    """The texts of `files` (all read by `builder`) through `datasets`' streaming loader."""
    import datasets

    where = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"
    options: dict[str, Any] = {}
    if builder in ("json", "text"):
        options.update(chunksize=CHUNK_BYTES, encoding_errors="replace")
    if builder == "text":
        options.update(sample_by="paragraph")
    with offline():
        try:
            dataset = datasets.load_dataset(
                builder,
                data_files=[glob.escape(str(f)) for f in files],  # names taken literally, not as patterns
                split="train",
                streaming=True,
                **options,
            )
        except Exception as err:
            raise InputError(f"cannot read corpus {where}: {_first_line(err)}") from err
    yield from _rows(dataset, where, "text" if builder == "text" else field, strip=builder == "text")


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _folder_files(path: Path) -> list[Path]:
    return sorted(
        p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".") and p.suffix != ".md"
    )


def _stream_folder(path: Path, field: str) -> Iterator[str]:
    """Every file of a folder in path order; consecutive text files share one `datasets` stream (the
    structured formats get one each, so files with different columns never meet in one schema)."""
    files = _folder_files(path)
    for builder, group in groupby(files, key=_builder):
        run = list(group)
        for batch in [run] if builder == "text" else [[f] for f in run]:
            yield from _stream_files(batch, builder, field)


def _load_saved(path: Path) -> Any:
    import datasets

    with offline():
        try:
            return single_split(datasets.load_from_disk(str(path)), str(path))
        except InputError:
            raise
        except Exception as err:
            raise InputError(f"cannot read the saved dataset {path}: {_first_line(err)}") from err


def load_cached_dataset(name: str, what: str = "corpus") -> Any:
    """The dataset `NAME[:CONFIG[:SPLIT]]` from the local Hugging Face cache, offline (`what` names the
    input in errors)."""
    import datasets
    import datasets.config

    parts = name.split(":")
    if len(parts) > 3 or not all(parts):
        raise InputError(f"{what} {name!r}: a cached dataset is named NAME, NAME:CONFIG or NAME:CONFIG:SPLIT")
    repo, config, split = (*parts, None, None)[:3]
    hub_log = logging.getLogger("datasets")  # "using the latest cached version" on every load
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    with offline():
        try:
            loaded = datasets.load_dataset(repo, config, split=split)
        except Exception as err:
            raise InputError(
                f"{what} {name!r} is no file or folder, nor a dataset in the local Hugging Face cache "
                f"({datasets.config.HF_DATASETS_CACHE}; read offline, never downloaded): {_first_line(err)}"
            ) from err
        finally:
            hub_log.setLevel(level)
    if isinstance(loaded, datasets.DatasetDict) and len(loaded) > 1:
        if "train" not in loaded:
            raise InputError(f"{what} {name!r} holds splits {sorted(loaded)}: name one, NAME:CONFIG:SPLIT")
        loaded = loaded["train"]
    return single_split(loaded, name)


def _dataset_name(dataset: Any) -> str:
    fingerprint = getattr(dataset, "_fingerprint", None)
    return f"datasets.{type(dataset).__name__}" + (f"@{fingerprint}" if fingerprint else "")


def looks_like_path(name: str) -> bool:
    """Whether a missing `name` was meant as a path rather than a cached dataset's name."""
    return (
        Path(name).is_absolute()
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or Path(name).suffix.lower() in (*FILE_BUILDERS, ".txt")
    )


def open_corpus(source: str | Path | Any, *, text_field: str = "text") -> Corpus:
    """`source` (see the module docstring) as a re-iterable stream of texts.

    Args:
      source: a path, a cached dataset's name, or a `datasets` dataset.
      text_field: the column or JSON field holding the texts (text files: their blocks).

    Raises:
      InputError: a path that does not exist, a name that is not in the local cache, a dataset without
        `text_field`, a file `datasets` cannot read (some only when streamed).
    """
    import datasets

    if isinstance(
        source,
        datasets.Dataset | datasets.IterableDataset | datasets.DatasetDict | datasets.IterableDatasetDict,
    ):
        dataset = single_split(source, type(source).__name__)
        name = _dataset_name(dataset)
        return Corpus(name, lambda: _rows(dataset, name, text_field))
    if not isinstance(source, str | Path):
        raise InputError(
            f"a corpus is a path, a cached dataset's name or a datasets.Dataset, got {type(source).__name__}"
        )
    path = Path(source).expanduser()
    if path.is_dir():
        name = str(path.resolve())
        if _is_saved_dataset(path):
            return Corpus(name, lambda: _rows(_load_saved(path), name, text_field))
        return Corpus(name, lambda: _stream_folder(path, text_field))
    if path.is_file():
        return Corpus(str(path.resolve()), lambda: _stream_files([path], _builder(path), text_field))
    if isinstance(source, Path) or looks_like_path(str(source)):
        raise InputError(f"corpus {source} does not exist")
    load_cached_dataset(str(source))  # refused now, not at the first pass, when the name is not cached
    return Corpus(f"hf:{source}", lambda: _rows(load_cached_dataset(str(source)), f"hf:{source}", text_field))
