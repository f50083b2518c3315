"""The edit journal: a model's edits in order, listable, withdrawable by id, saved and loaded.

A journal holds a `Model` whose `edits` are its entries (see `jaxedit.edit.delta`: params are always the
unedited `base` plus the applied deltas, so withdrawing is exact). On disk a journal is a directory:
`journal.json` (format version, the base model's fingerprint and source, the entries' summaries in
order) and `deltas.safetensors` (`<id>.left`, `<id>.right` factors and `<id>.layers`; iReVa entries
`<id>.keys`, `.values`, `.owner`, `.token`), written atomically
(a temporary directory renamed into place).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from jaxedit.display import html_table, request_text
from jaxedit.edit.adaptors import AdaptorEdit, adaptor_edits, withdraw_fact
from jaxedit.edit.delta import Delta, apply, revert
from jaxedit.edit.stats import fingerprint
from jaxedit.loading import Model, save_hf

FORMAT = 1


def _delta(entry: dict, tensors: dict[str, np.ndarray]) -> Delta:
    """A saved entry (summary + factors) as a `Delta`, with its attached deltas."""
    key = entry["id"]
    return Delta(
        layers=tuple(int(x) for x in tensors[f"{key}.layers"]), left=tensors[f"{key}.left"],
        right=tensors[f"{key}.right"], method=entry["method"], requests=tuple(entry["requests"]), id=key,
        info=entry.get("info", {}), site=entry.get("site", "mlp"),
        attached=tuple(_delta(part, tensors) for part in entry.get("attached", ())),
    )  # fmt: skip


class EditJournal:
    """Edits applied to a model, in order. `journal.model` is the edited model (a value)."""

    def __init__(self, model: Model) -> None:
        self.model = model

    @property
    def base(self) -> Model:
        """The unedited model."""
        if self.model.base is None:
            return self.model
        return self.model.replace(params=self.model.base, base=None, edits=())

    def apply(self, delta: Delta) -> Model:
        """Apply `delta` after the current edits; returns the edited model."""
        self.model = apply(self.model, delta)
        return self.model

    def withdraw(self, edit_id: str, mode: str = "mute") -> Model:
        """Withdraw the edit with this id, or the adaptor fact with this id (iReVa, METHODS.md §9: its
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
            raise KeyError(
                f"edit or fact {edit_id!r} is not applied to this journal's model (edits: {applied}{more})"
            )
        return self.model

    def entries(self) -> list[dict]:
        """Summaries of the applied edits, in order."""
        return [d.summary() for d in self.model.edits]

    def __len__(self) -> int:
        return len(self.model.edits)

    def save(self, directory: str | Path) -> Path:
        """Write the journal to `directory` (replaced atomically if it exists)."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            tensors: dict[str, np.ndarray] = {}
            for d in self.model.edits:
                tensors.update(d.tensors())
            if tensors:
                save_file(tensors, str(staging / "deltas.safetensors"))
            meta = {
                "format": FORMAT,
                "base_fingerprint": fingerprint(self.base),
                "base_source": self.model.source,
                "entries": self.entries(),
            }
            (staging / "journal.json").write_text(json.dumps(meta, indent=1))
            if directory.exists():
                old = directory.with_name(f".{directory.name}.old")
                os.replace(directory, old)
                os.replace(staging, directory)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return directory

    @classmethod
    def load(cls, directory: str | Path, model: Model) -> EditJournal:
        """Re-apply a saved journal to `model` (the unedited model it was made on; checked)."""
        directory = Path(directory)
        meta_path = directory / "journal.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{directory} holds no journal.json")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"journal format {meta.get('format')} is not supported (expected {FORMAT})")
        journal = cls(model)
        if fingerprint(journal.base) != meta["base_fingerprint"]:
            raise ValueError(
                f"journal {directory} was made on another model ({meta['base_source']}); "
                "load it onto the unedited model it was made on"
            )
        tensors = load_file(str(directory / "deltas.safetensors")) if meta["entries"] else {}
        journal = cls(journal.base)
        for entry in meta["entries"]:
            if entry.get("kind") == "adaptor":
                journal.apply(AdaptorEdit.from_saved(entry, tensors))
            else:
                journal.apply(_delta(entry, tensors))
        return journal

    def export(self, directory: str | Path) -> Path:
        """Save the edited model as a Hugging Face checkpoint (`save_hf`)."""
        return save_hf(self.model, directory)

    def _repr_html_(self) -> str:
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
