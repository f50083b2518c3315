"""Sharded checkpoints with orbax: an edited model or key statistics saved from every process of a run
and restored onto any mesh. (Hugging Face export stays `jaxedit.save_hf`, safetensors.)

`save_sharded(model, directory)` writes the params as an orbax checkpoint in which every process
writes the shards it holds (`jax.distributed` runs: every process calls it, with the same arguments),
and `restore_sharded(directory, mesh)` reads them straight into `mesh`'s param shardings
(`jaxedit.core.sharding.param_shardings`), whatever mesh or number of processes saved them: each process
reads only its shards. `save_statistics_sharded` / `restore_statistics_sharded` do the same for key
statistics (`jaxedit.edit.stats.KeyStats`, one `[F, F]` matrix per layer).

A checkpoint is a directory of jaxedit's own files (`jaxedit.io.files`, recorded in `.jaxedit-files.json`):

- `checkpoint.json`: what was saved (`kind` model or statistics), the config, the fingerprint of the
  saved params (`jaxedit.core.fingerprint`, checked on restore), the jaxedit and orbax versions;
- `state-<n>/`: the orbax checkpoint of the arrays;
- `journal/` (an edited model saved with `merged=False`, the default): its `EditJournal`, re-applied
  on restore, so the restored model's edits can still be withdrawn exactly;
- `tokenizer/`: the model's tokenizer, when it has one.

Saving into a directory that holds anything but an earlier jaxedit checkpoint is refused before
anything is written (`FilesError`); an earlier checkpoint there is replaced, its files removed only
once the new one is complete. Restoring a directory that is not a jaxedit checkpoint, or whose arrays
are not the ones recorded, raises `InputError` / `FilesError` with a one-line message. The small files
are written by process 0; the checkpoint directory must be one shared filesystem path seen by every
process (as orbax requires).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from jaxedit.core import layout
from jaxedit.core.config import ModelConfig
from jaxedit.edit.gate import adaptor_of
from jaxedit.errors import FilesError, InputError
from jaxedit.io.files import MANIFEST, atomic_write_bytes, owned_files, record_owned, write_owned
from jaxedit.io.loading import Model

FORMAT = 1
RECORD = "checkpoint.json"
JOURNAL = "journal"
TOKENIZER = "tokenizer"
# an interrupted save's debris: neither claimed nor refused (orbax's unfinished folder, a staging folder)
LEFTOVERS = (".orbax-checkpoint-tmp-", ".jaxedit-staging-")


def _barrier(name: str) -> None:
    """Wait for every process of a `jax.distributed` run (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _files_under(directory: Path) -> set[str]:
    """Relative names of the files below `directory` (recursively), leaving out the record of owned
    files and an interrupted save's leftovers."""
    names: set[str] = set()
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not any(mark in d for mark in LEFTOVERS)]
        base = Path(root).relative_to(directory)
        names.update((base / f).as_posix() for f in files)
    return names - {MANIFEST}


def _read_record(directory: Path, kind: str | None) -> dict[str, Any]:
    """The checkpoint's `checkpoint.json`, or `InputError` when `directory` is not a jaxedit sharded
    checkpoint (of `kind`, when given)."""
    path = directory / RECORD
    if not path.is_file():
        what = "does not exist" if not directory.exists() else f"holds no {RECORD}"
        raise InputError(f"{directory} is not a jaxedit sharded checkpoint (it {what})")
    try:
        record = json.loads(path.read_text())
        found, state = record["jaxedit_checkpoint"], str(record["state"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path} is not a readable jaxedit checkpoint record ({err})") from None
    if found != FORMAT:
        raise InputError(f"{path}: checkpoint format {found} is not supported (expected {FORMAT})")
    if kind is not None and record.get("kind") != kind:
        use = {"model": "restore_sharded", "statistics": "restore_statistics_sharded"}
        hint = f"; restore it with {use[record['kind']]}" if record.get("kind") in use else ""
        raise InputError(f"{directory} holds a {record.get('kind')} checkpoint, not a {kind} one{hint}")
    if "/" in state or state in ("", ".", ".."):
        raise InputError(f"{path} names its arrays {state!r}, not a folder of the checkpoint")
    return record


def _claim(directory: Path, what: str) -> tuple[dict[str, Any] | None, set[str]]:
    """Whether `directory` may receive a checkpoint: the record of the jaxedit checkpoint already there
    (None when the directory is new or empty) and jaxedit's files in it. `FilesError` (nothing written)
    for a file, or a directory holding anything jaxedit did not write or that is not a checkpoint."""
    if directory.exists() and not directory.is_dir():
        raise FilesError(f"{directory} exists and is not a directory; choose another place to save")
    present = _files_under(directory) if directory.exists() else set()
    if not present:
        return None, set()
    owned = owned_files(directory)
    foreign = sorted(present - owned)
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise FilesError(
            f"{directory} already holds {shown}, not written by jaxedit; refusing to save {what} there "
            "(choose a new or empty directory; nothing was changed)"
        )
    try:
        return _read_record(directory, None), owned
    except InputError:
        raise FilesError(
            f"{directory} holds jaxedit files that are not a sharded checkpoint; refusing to replace them "
            f"with {what} (choose a new or empty directory; nothing was changed)"
        ) from None


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def _save(
    directory: str | Path, tree: Any, record: Mapping[str, Any], what: str, extras: Sequence[Any] = ()
) -> Path:
    """Write `tree` (orbax, from every process), the small files of `extras` (`(folder, writer)` pairs
    run by process 0 with the checkpoint directory) and `record` as `checkpoint.json`, then claim them
    and remove the earlier checkpoint's files. Every process calls this with the same arguments."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    previous, owned = _claim(directory, what)
    generation = int(previous.get("generation", 0)) + 1 if previous else 1
    while (directory / f"state-{generation}").exists():  # an empty folder of that name (not ours)
        generation += 1
    state = f"state-{generation}"
    _barrier(f"jaxedit-save-start {directory}")  # every process checked before anything is written
    checkpointer = _checkpointer()
    try:
        checkpointer.save(directory / state, args=ocp.args.StandardSave(tree))
    finally:
        checkpointer.close()
    if jax.process_index() == 0:
        folders = [state]
        for folder, writer in extras:
            writer(directory / folder)
            folders.append(folder)
        full = {
            "jaxedit_checkpoint": FORMAT, **record, "state": state, "generation": generation,
            "jaxedit_version": _version("jaxedit"), "orbax_version": _version("orbax-checkpoint"),
            "saved_by": {"processes": jax.process_count(), "devices": jax.device_count()},
        }  # fmt: skip
        atomic_write_bytes(directory / RECORD, json.dumps(full, indent=1).encode())
        produced = {RECORD} | {n for n in _files_under(directory) if n.split("/")[0] in folders}
        record_owned(directory, owned | produced)  # the new files are claimed before the old go
        for name in sorted(owned - produced):
            _remove_owned(directory, name)
        record_owned(directory, produced)
    _barrier(f"jaxedit-save-done {directory}")  # no process returns before the checkpoint is complete
    return directory


def _remove_owned(directory: Path, name: str) -> None:
    """Delete one of jaxedit's files in `directory`, and the folders that leaves empty."""
    path = directory / name
    try:
        path.unlink()
    except (FileNotFoundError, IsADirectoryError):
        return
    parent = path.parent
    while parent != directory and parent.is_relative_to(directory):
        try:
            parent.rmdir()
        except OSError:  # not empty (or already gone)
            return
        parent = parent.parent


def _restore(directory: Path, record: Mapping[str, Any], target: Any) -> Any:
    """The checkpoint's arrays read into `target` (a pytree of `jax.ShapeDtypeStruct`s with their
    `sharding`, read as `jax.Array`s, and of numpy arrays, read as numpy); `FilesError` when they cannot
    be read."""
    import orbax.checkpoint as ocp

    checkpointer = _checkpointer()
    try:
        return checkpointer.restore(directory / record["state"], args=ocp.args.StandardRestore(target))
    except Exception as err:  # orbax / tensorstore report missing or damaged files in many types
        reason = (str(err).strip().splitlines() or [""])[0][:300]
        raise FilesError(
            f"{directory}: the saved arrays cannot be restored ({type(err).__name__}: {reason})"
        ) from err
    finally:
        checkpointer.close()


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _frozen(value: Any) -> Any:
    """JSON lists back as tuples (config fields are hashable: configs are static arguments of jit)."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _config(directory: Path, record: Mapping[str, Any]) -> ModelConfig:
    try:
        fields = dict(record["config"])
        if fields.get("rope_scaling") is not None:
            fields["rope_scaling"] = tuple((str(k), _frozen(v)) for k, v in fields["rope_scaling"])
        return ModelConfig(**fields)
    except (KeyError, TypeError, ValueError) as err:  # ConfigError is a ValueError
        raise InputError(f"{directory / RECORD} holds no usable model config ({err})") from None


def save_sharded(model: Model, directory: str | Path, *, merged: bool = False) -> Path:
    """Save `model` as a sharded checkpoint in `directory`; every process of a `jax.distributed` run
    calls this with the same arguments (each writes the shards it holds).

    Args:
      model: params placed anyhow (sharded across processes, on one device, numpy); its tokenizer is
        saved too.
      directory: a new or empty directory, or one holding an earlier jaxedit checkpoint (replaced);
        anything else is refused (`FilesError`) before anything is written.
      merged: for an edited model, False (default) saves the unedited params and the edit journal
        (restored with the same edits, withdrawable exactly); True saves the edited params alone (the
        restored model carries no edits). iReVa adaptor neurons need `merged=False`.

    Returns:
      `directory`.
    """
    from jaxedit.edit.journal import EditJournal

    directory = Path(directory).absolute()
    _claim(directory, "a sharded checkpoint")  # refused before any work; checked again when saving
    if merged and adaptor_of(model.params) is not None:
        raise InputError(
            "this model carries iReVa adaptor neurons, which merged params cannot hold; save it with "
            "merged=False (its edit journal re-applies them on restore)"
        )
    journal = bool(model.edits) and not merged
    if model.base is not None and model.base_digest is None:
        model = model.replace(base_digest=model.base_fingerprint)
    # fingerprints are programs over every process's shards: computed here, by every process
    fingerprint = model.base_fingerprint if journal else model.fingerprint
    edited = model.fingerprint
    params = model.base if journal else model.params
    extras = []
    if journal:
        extras.append((JOURNAL, lambda folder: EditJournal(model).save(folder)))
    if model.tokenizer is not None:
        save = model.tokenizer.save_pretrained
        extras.append((TOKENIZER, lambda folder: write_owned(folder, writers=[lambda s: save(str(s))])))
    record = {
        "kind": "model", "config": dataclasses.asdict(model.config), "fingerprint": fingerprint,
        "edited_fingerprint": edited, "merged": bool(merged and model.edits),
        "edits": [e.id for e in model.edits], "journal": JOURNAL if journal else None,
        "tokenizer": TOKENIZER if model.tokenizer is not None else None, "source": model.source,
    }  # fmt: skip
    return _save(directory, params, record, "a sharded checkpoint", extras)


def restore_sharded(
    directory: str | Path,
    mesh: Mesh | None = None,
    *,
    rules: Mapping[str, str | None] | None = None,
    uneven: str = "error",
) -> Model:
    """The model saved by `save_sharded`, its params read straight into `mesh`'s shardings.

    Args:
      directory: the checkpoint.
      mesh: any mesh (another size, shape or number of processes than the one that saved it); every
        process of a `jax.distributed` run calls this with the same mesh and reads only its shards.
        None: every param on this process's first device. `rules` and `uneven` as in
        `jaxedit.core.sharding.param_shardings`.

    Returns:
      A `Model` (source: `directory`) with the saved tokenizer, and the saved edits re-applied when it
      was saved with its journal. `InputError` when `directory` is no model checkpoint; `FilesError`
      when its arrays cannot be read or are not the ones saved (their fingerprint differs).
    """
    directory = Path(directory).absolute()
    record = _read_record(directory, "model")
    config = _config(directory, record)
    if mesh is not None:
        from jaxedit.core.sharding import param_shardings

        shardings = param_shardings(config, mesh, rules, uneven)
    else:
        device = SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: device, layout.abstract_params(config))
    target = jax.tree.map(
        lambda spec, sharding: jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=sharding),
        layout.abstract_params(config),
        shardings,
    )
    params = _restore(directory, record, target)
    tokenizer = None
    if record.get("tokenizer"):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(directory / str(record["tokenizer"])))
    model = Model(config=config, params=params, tokenizer=tokenizer, source=str(directory))
    if model.fingerprint != record.get("fingerprint"):
        raise FilesError(
            f"{directory}: the restored params are not the ones saved (fingerprint {model.fingerprint}, "
            f"recorded {record.get('fingerprint')}): changed or damaged since"
        )
    if not record.get("journal"):
        return model
    from jaxedit.edit.journal import EditJournal

    folder = directory / str(record["journal"])
    if not (folder / "journal.json").is_file():
        raise InputError(f"{directory}: the checkpoint records an edit journal but {folder} holds none")
    return EditJournal.load(folder, model).model


def _rows(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
    """A statistics matrix's rows over every device of `mesh` (replicated when they do not divide)."""
    axes = tuple(mesh.axis_names)
    spec = PartitionSpec(axes) if shape and shape[0] % mesh.size == 0 else PartitionSpec()
    return NamedSharding(mesh, spec)


def save_statistics_sharded(
    stats: Mapping[int, Any], directory: str | Path, *, mesh: Mesh | None = None
) -> Path:
    """Save key statistics (`{layer: KeyStats}`, `jaxedit.edit.stats.key_statistics`) as a sharded
    checkpoint; every process of a `jax.distributed` run calls this with the same arguments.

    A matrix that is a `jax.Array` is written as it is sharded (each process its shards); a numpy matrix
    is first placed on `mesh`, its rows over all the mesh's devices (replicated where they do not
    divide), so each process writes its rows; without a mesh, process 0 writes it whole. `directory`
    as in `save_sharded`.
    """
    if not stats:
        raise InputError("no statistics to save")
    layers = sorted(int(layer) for layer in stats)
    tree, entries = {}, []
    for layer in layers:
        s = stats[layer]
        matrix = s.matrix
        if not isinstance(matrix, jax.Array):
            matrix = np.asarray(matrix)
            if mesh is not None:
                matrix = jax.device_put(matrix, _rows(mesh, matrix.shape))
        tree[f"layer_{layer}"] = matrix
        entries.append(
            {"layer": layer, "tokens": int(s.tokens), "meta": dict(s.meta), "shape": list(matrix.shape),
             "dtype": np.dtype(matrix.dtype).name}
        )  # fmt: skip
    record = {"kind": "statistics", "layers": entries}
    return _save(directory, tree, record, "a statistics checkpoint")


def restore_statistics_sharded(directory: str | Path, mesh: Mesh | None = None) -> dict[int, Any]:
    """The key statistics saved by `save_statistics_sharded`, as `{layer: KeyStats}`.

    With a `mesh` each matrix is a `jax.Array` with its rows over the mesh's devices (each process
    reads its rows); without one, a numpy array read whole (what the editing functions take).
    """
    from jaxedit.edit.stats import KeyStats

    directory = Path(directory).absolute()
    record = _read_record(directory, "statistics")
    try:
        entries = [
            (int(e["layer"]), tuple(int(n) for n in e["shape"]), np.dtype(e["dtype"]), e)
            for e in record["layers"]
        ]
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{directory / RECORD} does not describe its statistics ({err})") from None
    # a numpy target restores as numpy (np.empty touches no memory); a struct without a sharding would
    # take the saved one, which names devices that may not exist here
    target = {
        f"layer_{layer}": jax.ShapeDtypeStruct(shape, dtype, sharding=_rows(mesh, shape))
        if mesh is not None
        else np.empty(shape, dtype)
        for layer, shape, dtype, _ in entries
    }
    arrays = _restore(directory, record, target)
    return {
        layer: KeyStats(matrix=arrays[f"layer_{layer}"], tokens=int(e["tokens"]), meta=dict(e["meta"]))
        for layer, _, _, e in entries
    }
