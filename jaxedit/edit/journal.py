"""The edit journal: a model's edits in order, listable, withdrawable by id, saved and loaded.

A journal holds a `Model` whose `edits` are its entries (see `jaxedit.edit.delta`: params are always the
unedited `base` plus the applied deltas, so withdrawing is exact). On disk a journal is a directory:
`journal.json` (format version, the fingerprints of the unedited and the edited weights, the base
model's source, the SHA-256 of the deltas file, the entries' summaries in order) and
`deltas.safetensors` (`<id>.left`, `<id>.right` factors and `<id>.layers`; iReVa entries `<id>.keys`,
`.values`, `.owner`, `.token`), each written atomically as jaxedit's own files in that directory
(`jaxedit.io.files.write_owned`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from jaxedit.display import Rendered, html_table, request_text
from jaxedit.edit.adaptors import AdaptorEdit, adaptor_edits, withdraw_fact
from jaxedit.edit.delta import Delta, apply, revert
from jaxedit.errors import InputError, NotAppliedError
from jaxedit.io.files import write_owned
from jaxedit.io.loading import Model, save_hf

FORMAT = 2
DELTAS = "deltas.safetensors"


def _read_deltas(directory: Path, meta: dict) -> dict[str, np.ndarray]:
    """The journal's tensors, after checking the file is the one the journal recorded."""
    path = directory / DELTAS
    if not path.exists():
        raise InputError(f"journal {directory} lists edits but holds no {DELTAS}")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("deltas_sha256"):
        raise InputError(
            f"{path} is not the file journal.json recorded (changed or corrupt since it was saved)"
        )
    try:
        return load_safetensors(blob)
    except Exception as err:  # a malformed file that still matched: only by a forged record
        raise InputError(f"{path} cannot be read: {err}") from None


def _check_entries(directory: Path, entries: list[dict], tensors: dict[str, np.ndarray]) -> None:
    """Every entry's recorded layers equal its tensors' layers, and no tensor belongs to no entry."""
    expected: set[str] = set()
    for entry in (part for e in entries for part in (e, *e.get("attached", ()))):
        key = entry.get("id")
        names = {n for n in tensors if n.startswith(f"{key}.")}
        if not names:
            raise InputError(f"journal {directory}: entry {key} has no tensors")
        expected |= names
        if entry.get("kind") != "adaptor":
            layers = [int(x) for x in tensors.get(f"{key}.layers", [])]
            if layers != [int(x) for x in entry.get("layers", ())]:
                raise InputError(
                    f"journal {directory}: entry {key} records layers {entry.get('layers')} but its tensors "
                    f"are for layers {layers}"
                )
    extra = sorted(set(tensors) - expected)
    if extra:
        raise InputError(f"journal {directory}: tensors {extra[:4]} belong to no entry")


def _delta(entry: dict, tensors: dict[str, np.ndarray]) -> Delta:
    """A saved entry (summary + factors) as a `Delta`, with its attached deltas."""
    key = entry["id"]
    return Delta(
        layers=tuple(int(x) for x in tensors[f"{key}.layers"]), left=tensors[f"{key}.left"],
        right=tensors[f"{key}.right"], method=entry["method"], requests=tuple(entry["requests"]), id=key,
        info=entry.get("info", {}), site=entry.get("site", "mlp"),
        attached=tuple(_delta(part, tensors) for part in entry.get("attached", ())),
    )  # fmt: skip


class EditJournal(Rendered):
    """Edits applied to a model, in order. `journal.model` is the edited model (a value)."""

    def __init__(self, model: Model) -> None:
        self.model = model

    @property
    def base(self) -> Model:
        """The unedited model."""
        return self.model.unedited()

    def apply(self, delta: Delta) -> Model:
        """Apply `delta` after the current edits; returns the edited model."""
        self.model = apply(self.model, delta)
        return self.model

    def withdraw(self, edit_id: str, mode: str = "mute") -> Model:
        """Withdraw the edit with this id, or the adaptor fact with this id (iReVa, docs/methods.md §9: its
        neurons are muted, or with `mode="remove"` taken out of the gate as the paper does; see
        `jaxedit.edit.adaptors`); `KeyError` naming the applied ids if there is none."""
        if any(d.id == edit_id for d in self.model.edits):
            self.model = revert(self.model, edit_id)
        elif any(edit_id in e.facts for e in adaptor_edits(self.model)):
            self.model = withdraw_fact(self.model, edit_id, mode)
        else:
            applied = ", ".join(d.id for d in self.model.edits) or "none"
            facts = sum(len(e.facts) for e in adaptor_edits(self.model))
            more = f" and {facts} adaptor facts (see list_facts)" if facts else ""
            raise NotAppliedError(
                f"edit or fact {edit_id!r} is not applied to this journal's model (edits: {applied}{more})"
            )
        return self.model

    def entries(self) -> list[dict]:
        """Summaries of the applied edits, in order."""
        return [d.summary() for d in self.model.edits]

    def __len__(self) -> int:
        return len(self.model.edits)

    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write `journal.json` and `deltas.safetensors` into `directory`, as jaxedit's own files there
        (`jaxedit.io.files.write_owned`: other files are kept; a same-named file jaxedit did not write
        refuses the save unless `overwrite`). The record holds the fingerprints of the unedited and the
        edited weights and a SHA-256 of the deltas file, all checked by `load`."""
        return write_owned(directory, self.files(), overwrite=overwrite, what="the edit journal")

    def files(self) -> dict[str, bytes]:
        """The journal's files by name (`save` writes them; `load` reads them)."""
        tensors: dict[str, np.ndarray] = {}
        for d in self.model.edits:
            tensors.update(d.tensors())
        # safetensors writes an array's buffer as it lies in memory: a strided one (MEMIT's factors of
        # several layers and requests) is laid out in C order first, or it would load scrambled
        tensors = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
        blob = save_safetensors(tensors) if tensors else None
        meta = {
            "format": FORMAT,
            "base_fingerprint": self.model.base_fingerprint,
            "edited_fingerprint": self.model.fingerprint,
            "base_source": self.model.source,
            "deltas_sha256": hashlib.sha256(blob).hexdigest() if blob is not None else None,
            "entries": self.entries(),
        }
        files = {"journal.json": json.dumps(meta, indent=1).encode()}
        if blob is not None:
            files[DELTAS] = blob
        return files

    @classmethod
    def load(cls, directory: str | Path, model: Model) -> EditJournal:
        """Re-apply a saved journal to `model`, the unedited model it was made on.

        Refused (`InputError`) when `model` carries edits, when it is the edited model the journal
        produced (its edits would be applied twice), when it is another model, and when the deltas file
        or an entry's layers were changed since the journal was saved.
        """
        directory = Path(directory)
        meta_path = directory / "journal.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{directory} holds no journal.json")
        try:
            meta = json.loads(meta_path.read_text())
            entries, base_fp = list(meta["entries"]), str(meta["base_fingerprint"])
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{meta_path} is not a readable journal record ({err})") from None
        if meta.get("format") != FORMAT:
            raise InputError(
                f"{meta_path}: journal format {meta.get('format')} is not supported (expected {FORMAT}; "
                "journals of format 1 cannot tell an edited model from its base: re-create the edits)"
            )
        if model.edits:
            raise InputError(
                f"load a journal onto the unedited model: this one already carries {len(model.edits)} "
                "edits (use model.unedited())"
            )
        if entries and model.fingerprint == meta.get("edited_fingerprint"):
            raise InputError(
                f"this model is the edited model journal {directory} produced: loading it would apply its "
                f"{len(entries)} edits a second time; load the journal onto the unedited model"
            )
        if model.fingerprint != base_fp:
            raise InputError(
                f"journal {directory} was made on another model ({meta.get('base_source')}, fingerprint "
                f"{base_fp}; this one is {model.fingerprint}); load it onto the unedited model it was made on"
            )
        tensors = _read_deltas(directory, meta) if entries else {}
        _check_entries(directory, entries, tensors)
        journal = cls(model)
        for entry in entries:
            if entry.get("kind") == "adaptor":
                journal.apply(AdaptorEdit.from_saved(entry, tensors))
            else:
                journal.apply(_delta(entry, tensors))
        return journal

    def export(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Save the edited model as a Hugging Face checkpoint (`save_hf`)."""
        return save_hf(self.model, directory, overwrite=overwrite)

    def _display_fields(self) -> list[tuple[str, str | None, Any]]:
        """Treescope's fields (`treescope.render_to_text(journal)`): the model, its fingerprints and
        the entries in order."""
        model = self.model
        return [
            ("model", ".model.name", model.name), ("edits", None, len(self)),
            ("base_fingerprint", ".model.base_fingerprint", model.base_fingerprint),
            ("fingerprint", ".model.fingerprint", model.fingerprint), ("entries", ".entries()", self.entries()),
        ]  # fmt: skip

    def _html_table(self) -> str:
        rows = (
            (
                e["id"],
                e["method"],
                ",".join(map(str, e["layers"])),
                "; ".join(request_text(r) for r in e["requests"]),
                ", ".join(f"{float(n):.3g}" for n in e["norms"].values()),
            )
            for e in self.entries()
        )
        header = ("id", "method", "layers", "edits", "‖ΔW‖")
        return html_table(f"{len(self)} edits on {self.model.name}", header, rows)
