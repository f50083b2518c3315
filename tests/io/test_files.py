"""Users' files are sacred: saving never destroys what jaxedit did not write (issue 34, finding 1)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest

import jaxedit
from jaxedit import cli
from jaxedit.edit import EditJournal
from jaxedit.edit.delta import Delta
from jaxedit.errors import FilesError
from jaxedit.io.files import MANIFEST, write_output


def snapshot(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under `directory`, by relative path."""
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def model_dir(tiny_dirs, tmp_path) -> Path:
    """A private copy of the tiny GPT-2 with a README of the user's."""
    target = tmp_path / "gpt2"
    shutil.copytree(tiny_dirs["gpt2"], target)
    (target / "README.md").write_text("the user's notes")
    return target


def _zero_delta(model) -> Delta:
    import numpy as np

    c = model.config
    return Delta(
        layers=(1,), left=np.ones((1, 1, c.d_mlp)), right=np.ones((1, 1, c.d_model)) * 1e-3, method="t"
    )


def test_saving_into_the_models_own_folder_is_refused_and_changes_nothing(model_dir) -> None:
    model = jaxedit.load_model(model_dir)
    before = snapshot(model_dir)
    edited = jaxedit.edit.apply(model, _zero_delta(model))
    with pytest.raises(FilesError, match="was loaded from"):
        jaxedit.save_hf(edited, model_dir)
    assert snapshot(model_dir) == before
    jaxedit.save_hf(edited, model_dir, overwrite=True)  # asked for: weights replaced, README kept
    after = snapshot(model_dir)
    assert (
        after["README.md"] == before["README.md"]
        and after["model.safetensors"] != before["model.safetensors"]
    )
    assert jaxedit.load_model(model_dir).fingerprint == edited.fingerprint


def test_a_target_that_is_a_file_is_refused(tiny_dirs, tmp_path) -> None:
    target = tmp_path / "taken"
    target.write_text("a file")
    model = jaxedit.load_model(tiny_dirs["gpt2"])
    for save in (lambda: jaxedit.save_hf(model, target), lambda: EditJournal(model).save(target)):
        with pytest.raises(FilesError, match="not a directory"):
            save()
        assert target.read_text() == "a file"


def test_shadowing_weights_refuse_even_with_overwrite(tiny_dirs, tmp_path) -> None:
    target = tmp_path / "sharded"
    target.mkdir()
    (target / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(FilesError, match="a loader could read instead"):
        jaxedit.save_hf(jaxedit.load_model(tiny_dirs["gpt2"]), target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors.index.json"]


def test_journal_save_keeps_other_files_and_refuses_foreign_ones(tiny_dirs, tmp_path) -> None:
    model = jaxedit.load_model(tiny_dirs["gpt2"])
    journal = EditJournal(model)
    journal.apply(_zero_delta(model))
    target = tmp_path / "journal"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    journal.save(target)
    journal.save(target)  # its own files again
    assert (target / "notes.txt").read_text() == "mine"
    (target / "journal.json").write_text("{}")  # replaced by the user: no longer jaxedit's
    with pytest.raises(FilesError, match=r"journal\.json"):
        journal.save(target)
    assert (target / "journal.json").read_text() == "{}"
    EditJournal(model).save(target, overwrite=True)  # no edits: the old deltas file (jaxedit's) goes
    assert sorted(p.name for p in target.iterdir()) == [MANIFEST, "journal.json", "notes.txt"]


def test_new_files_and_folders_follow_the_umask(tiny_dirs, tmp_path) -> None:
    old = os.umask(0o022)
    try:
        out = jaxedit.save_hf(jaxedit.load_model(tiny_dirs["gpt2"]), tmp_path / "new" / "model")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]  # no staging folder left


def test_write_output_refuses_a_file_it_did_not_write(tmp_path) -> None:
    theirs = tmp_path / "trace.json"
    theirs.write_text("theirs")
    with pytest.raises(FilesError, match="not written by jaxedit"):
        write_output(theirs, b"ours")
    assert theirs.read_text() == "theirs"
    mine = write_output(tmp_path / "other.json", b"1")
    write_output(mine, b"2")  # its own file: replaced
    assert mine.read_bytes() == b"2"


def test_cli_edit_saving_over_its_model_is_refused_before_editing(model_dir, capsys) -> None:
    before = snapshot(model_dir)
    args = ["edit", str(model_dir), "--method", "ft", "--prompt", "the mother tongue of {} is", "--subject",
            "danielle darrieux", "--target", "english", "--layer", "1", "--save", str(model_dir)]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "was loaded from" in err and len(err.strip().splitlines()) == 1
    assert snapshot(model_dir) == before


def test_commands_leave_the_source_model_byte_identical(model_dir, tmp_path) -> None:
    before = snapshot(model_dir)
    m = str(model_dir)
    edit = ["--prompt", "the mother tongue of {} is", "--subject", "danielle darrieux", "--target", "english"]
    commands = [
        ["info", m],
        ["generate", m, "the eiffel tower", "--max-new-tokens", "2"],
        ["stats", m, "--layers", "1", "--samples", "4", "--max-len", "8"],
        ["trace", m, "--prompt", "the eiffel tower is in", "--subject", "the eiffel tower", "--kinds", "mlp",
         "--samples", "1", "--window", "1", "--out", str(tmp_path / "trace")],
        ["edit", m, "--method", "ft", *edit, "--layer", "1", "--max-new-tokens", "1", "--save", str(tmp_path / "e")],
    ]  # fmt: skip
    for command in commands:
        assert cli.main(command) == 0, command
    assert snapshot(model_dir) == before
