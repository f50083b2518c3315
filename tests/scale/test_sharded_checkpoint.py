"""Sharded orbax checkpoints in one process: refusals and checks (meshes and processes: test_multiprocess)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import chex
import numpy as np
import pytest

import jaxedit
from jaxedit.core import layout
from jaxedit.core.config import ModelConfig
from jaxedit.edit import Delta, EditJournal, apply
from jaxedit.edit.stats import KeyStats
from jaxedit.errors import FilesError, InputError
from jaxedit.scale.sharded_checkpoint import (
    restore_sharded,
    restore_statistics_sharded,
    save_sharded,
    save_statistics_sharded,
)

CONFIG = ModelConfig(
    family="llama", vocab_size=32, d_model=16, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=8, d_mlp=24,
    max_positions=16, norm="rmsnorm", norm_eps=1e-6, activation="silu", gated_mlp=True,
    positions="rotary", rotary_dim=8,
)  # fmt: skip


@pytest.fixture(scope="module")
def model() -> jaxedit.Model:
    return jaxedit.Model(config=CONFIG, params=layout.init_params(CONFIG, seed=3, scale=0.2), source="tiny")


def listing(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_a_directory_that_is_no_checkpoint_is_refused_in_one_line(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.json").write_text("{not json")
    for directory in ("missing", "empty", "bad"):
        with pytest.raises(InputError) as caught:
            restore_sharded(tmp_path / directory)
        assert "\n" not in str(caught.value) and directory in str(caught.value)
    with pytest.raises(InputError, match="not a jaxedit sharded checkpoint"):
        restore_sharded(tmp_path / "empty")
    stats = {0: KeyStats(matrix=np.eye(4, dtype=np.float32), tokens=3, meta={"layer": 0})}
    save_statistics_sharded(stats, tmp_path / "stats")
    with pytest.raises(InputError, match=r"statistics checkpoint.*restore_statistics_sharded"):
        restore_sharded(tmp_path / "stats")
    back = restore_statistics_sharded(tmp_path / "stats")
    assert back[0].tokens == 3 and back[0].meta == {"layer": 0}
    np.testing.assert_array_equal(back[0].matrix, stats[0].matrix)


def test_saving_into_a_foreign_directory_is_refused_and_changes_nothing(model, tmp_path) -> None:
    foreign = tmp_path / "notes"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "sub" / "mine.txt").write_text("keep me")
    jaxedit.save_hf(model, tmp_path / "export")  # jaxedit's files, but no checkpoint: not replaced
    (tmp_path / "file").write_text("x")
    for target, reason in ((foreign, "not written by jaxedit"), (tmp_path / "export", "not a sharded"),
                           (tmp_path / "file", "not a directory")):  # fmt: skip
        before = listing(target) if target.is_dir() else target.read_bytes()
        with pytest.raises(FilesError, match=reason) as caught:
            save_sharded(model, target)
        assert "\n" not in str(caught.value)
        assert (listing(target) if target.is_dir() else target.read_bytes()) == before


def test_a_checkpoint_round_trips_and_a_changed_one_is_refused(model, tmp_path) -> None:
    delta = Delta(layers=(1,), left=np.full((1, 1, 24), 0.1), right=np.full((1, 1, 16), 0.2), method="test")
    edited = apply(model, delta)
    directory = save_sharded(edited, tmp_path / "ckpt")
    back = restore_sharded(directory)
    assert [e.id for e in back.edits] == [delta.id] and back.tokenizer is None
    chex.assert_trees_all_equal(back.params, edited.params)
    record = json.loads((directory / "checkpoint.json").read_text())
    assert record["kind"] == "model" and record["journal"] == "journal" and record["state"] == "state-1"
    assert record["fingerprint"] == model.fingerprint and record["edited_fingerprint"] == edited.fingerprint
    shutil.copytree(directory, tmp_path / "changed")
    record["fingerprint"] = "0" * 16
    (tmp_path / "changed" / "checkpoint.json").write_text(json.dumps(record))
    with pytest.raises(FilesError, match="not the ones saved"):
        restore_sharded(tmp_path / "changed")
    shutil.rmtree(tmp_path / "changed" / "state-1")
    with pytest.raises(FilesError, match="cannot be restored"):
        restore_sharded(tmp_path / "changed")
    with pytest.raises(FilesError, match="not written by jaxedit"):  # copied files are no longer jaxedit's
        save_sharded(model, tmp_path / "changed")


def test_a_journal_keeps_strided_factors(model, tmp_path) -> None:
    """MEMIT's factors of several layers and requests are strided views; safetensors writes raw buffers."""
    left = np.random.default_rng(0).normal(size=(24, 3, 2)).astype(np.float32).transpose(2, 1, 0)
    delta = Delta(layers=(0, 1), left=left, right=np.ones((2, 3, 16), np.float32), method="test")
    assert not delta.left.flags["C_CONTIGUOUS"]
    journal = EditJournal(model)
    journal.apply(delta)
    loaded = EditJournal.load(journal.save(tmp_path / "journal"), model)
    np.testing.assert_array_equal(loaded.model.edits[0].left, delta.left)
