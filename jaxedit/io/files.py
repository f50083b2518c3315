"""Writing files without destroying anyone else's: atomic writes and directories jaxedit owns in part.

Two rules hold for every file jaxedit writes (DESIGN.md, principle 9):

- **Atomic.** A file is written to a temporary sibling and renamed into place (`atomic_write_bytes`), so a
  reader, or a run killed half-way, never sees half a file. New files and folders get the permissions the
  umask gives (never the 0600 / 0700 of `tempfile`).
- **Owned.** In a directory that may hold other files (a model folder, an output folder a user names),
  jaxedit writes only the names it records as its own in that directory's `.jaxedit-files.json` (with
  each file's size and modification time: a file changed since is no longer jaxedit's), and
  refuses, before writing anything, to replace a file it did not write unless the caller asks
  (`overwrite=True`, `--overwrite`); even then it deletes nothing it did not write. Files it wrote
  there before and no longer writes are removed. `write_owned` is that rule; `write_output` is the same
  for one file.

Caches under `$JAXEDIT_CACHE` belong to jaxedit as a whole (see `jaxedit.io.cache`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from jaxedit.errors import FilesError

MANIFEST = ".jaxedit-files.json"

Writer = Callable[[Path], None]  # writes one or more files into the (staging) directory it is given


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temporary sibling, flushed to disk, then renamed into place.

    The parent directory is created if needed; the file gets the permissions `open` gives under the
    process umask. Readers see the old file or the new one, never a part.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def owned_files(directory: Path) -> set[str]:
    """Names jaxedit recorded as its own in `directory` whose files are still the ones it wrote (same
    size and modification time): a file someone replaced or changed since is no longer jaxedit's.
    Empty when there is no readable record."""
    try:
        record = json.loads((directory / MANIFEST).read_text())["files"]
        stamps = {str(name): tuple(stamp) for name, stamp in record.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    return {name for name, stamp in stamps.items() if _stamp(directory / name) == stamp}


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns)


def _check_target(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise FilesError(f"{directory} exists and is not a directory; choose another place to save")


def _refuse_foreign(directory: Path, names: Iterable[str], overwrite: bool, what: str) -> None:
    owned = owned_files(directory)
    foreign = sorted(n for n in names if (directory / n).exists() and n not in owned)
    if foreign and not overwrite:
        shown = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
        raise FilesError(
            f"{directory} already holds {shown}, not written by jaxedit; refusing to replace "
            f"{'them' if len(foreign) > 1 else 'it'} with {what} (save elsewhere, or pass overwrite=True / "
            "--overwrite to replace those files; no other file is ever removed)"
        )


def _record(directory: Path, names: Iterable[str]) -> None:
    """Record `names` (as they are now on disk) as jaxedit's files in `directory`."""
    stamps = {name: _stamp(directory / name) for name in sorted(set(names))}
    record = {"files": {name: list(stamp) for name, stamp in stamps.items() if stamp is not None}}
    atomic_write_bytes(directory / MANIFEST, json.dumps(record, indent=1).encode())


def record_owned(directory: str | Path, names: Iterable[str]) -> None:
    """Record `names` (paths relative to `directory`, as the files are now on disk) as jaxedit's files
    there, replacing the previous record: for writers that cannot stage their files (a checkpoint that
    several processes write, `jaxedit.scale.sharded_checkpoint`) and claim them once they are complete."""
    _record(Path(directory), names)


def write_owned(
    directory: str | Path,
    files: Mapping[str, bytes] = (),  # type: ignore[assignment]
    writers: Iterable[Writer] = (),
    *,
    overwrite: bool = False,
    what: str = "jaxedit's files",
    conflicts: Callable[[Path, set[str]], list[str]] | None = None,
) -> Path:
    """Write `files` (name -> bytes) and whatever `writers` produce into `directory`, as its owned files.

    Everything is first written to a staging folder inside `directory`; then, before anything in
    `directory` changes, each produced name is checked: a file of that name that jaxedit did not write
    there refuses the whole save (`FilesError`) unless `overwrite`. `conflicts(directory, names)` may
    name further files that would make the saved set ambiguous (other weights a loader could pick):
    they refuse the save even with `overwrite`. Then each file is renamed into place, the files
    jaxedit wrote there before and no longer writes are removed, and the record of owned names is
    written last.

    Returns:
      `directory`.
    """
    directory = Path(directory)
    _check_target(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".jaxedit-staging-", dir=directory))
    try:
        for name, data in dict(files).items():
            (staging / name).write_bytes(data)
        for writer in writers:
            writer(staging)
        produced = {p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()}
        if MANIFEST in produced:
            raise FilesError(f"{MANIFEST} is jaxedit's record of its files and cannot be saved as one")
        _refuse_foreign(directory, produced, overwrite, what)
        clashes = conflicts(directory, produced) if conflicts is not None else []
        if clashes:
            raise FilesError(
                f"{directory} holds {', '.join(sorted(clashes)[:6])}, which a loader could read instead of "
                f"the saved {what}; save into another directory"
            )
        previous = owned_files(directory)
        mode = 0o666 & ~_umask()  # writers such as safetensors create 0600 files
        for name in sorted(produced):
            source, target = staging / name, directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(source, mode)
            os.replace(source, target)
        for name in sorted(previous - produced):  # jaxedit's own leftovers from an earlier save
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                (directory / name).unlink()
        _record(directory, produced)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if still empty
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return directory


def write_output(path: str | Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write one output file atomically, as a file jaxedit owns in its directory (see `write_owned`):
    refused if a file of that name exists there that jaxedit did not write, unless `overwrite`."""
    path = Path(path)
    directory = path.parent
    _check_target(directory)
    _refuse_foreign(directory, [path.name], overwrite, f"a new {path.name}")
    atomic_write_bytes(path, data)
    _record(directory, owned_files(directory) | {path.name})
    return path


def _umask() -> int:
    """The process umask, read from /proc where it can be (setting it to read it races with threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def same_directory(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same existing directory (symlinks and `..` resolved)."""
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False
