"""Caches are keyed by what made them and checked when read: a truncated, garbage or foreign entry is
named and rebuilt, never used (issue 34: "Also" items on caches and checkpoints)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import interrupt_after

import jaxedit
from jaxedit.edit import stats as stats_lib
from jaxedit.edit.contexts import context_templates
from jaxedit.edit.stats import key_statistics
from jaxedit.io.cache import save_npz

TEXTS = [f"text number {i} about the eiffel tower and rome" for i in range(24)]


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return jaxedit.load_model(tiny_dirs["llama_gqa_untied"])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXEDIT_CACHE", str(tmp_path))
    return tmp_path


def _stats(model, **kwargs):
    return key_statistics(model, [1], TEXTS, progress=False, max_len=16, **kwargs)[1]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_a_bad_statistics_entry_is_named_and_rebuilt(model, cache, caplog, damage: str) -> None:
    fresh = _stats(model, cache=False)
    _stats(model)
    (entry,) = (cache / "stats").glob("*.npz")
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    elif damage == "garbage":
        entry.write_bytes(b"not an archive" * 100)
    else:  # a well-formed entry whose record names other weights
        save_npz(entry, {"matrix": np.eye(model.config.d_mlp, dtype=np.float32)}, {"fingerprint": "0" * 16})
    with caplog.at_level(logging.WARNING):
        rebuilt = _stats(model)
    assert str(entry) in caplog.text
    np.testing.assert_array_equal(rebuilt.matrix, fresh.matrix)
    np.testing.assert_array_equal(_stats(model).matrix, fresh.matrix)  # the rebuilt entry is used


def test_a_forged_or_foreign_checkpoint_is_not_used(model, cache, monkeypatch) -> None:
    fresh = _stats(model, cache=False, batch_tokens=32)  # 24 texts of 16 tokens: 12 batches of 2
    real, calls = stats_lib._accumulate, []
    interrupt_after(monkeypatch, stats_lib, "_accumulate", 3)  # after three batches, each checkpointed
    with pytest.raises(KeyboardInterrupt):
        _stats(model, batch_tokens=32, checkpoint_every=1)
    (partial,) = (cache / "stats").glob("*.partial.npz")
    run = partial.name.split(".")[0]
    shape = (1, model.config.d_mlp, model.config.d_mlp)
    forged = [
        {"run": "another run", "done": 4, "count": 64},  # another run's record
        {"run": run, "done": 10**6, "count": 64},  # this run's name, a state that cannot be
    ]
    for record in forged:
        save_npz(partial, {"acc": np.full(shape, 1e6, np.float32)}, record)
        calls.clear()
        monkeypatch.setattr(stats_lib, "_accumulate", lambda *args: calls.append(1) or real(*args))
        np.testing.assert_array_equal(_stats(model, batch_tokens=32).matrix, fresh.matrix)
        assert len(calls) == 12  # from the first batch
        for path in (cache / "stats").glob("*.npz"):
            path.unlink()


def test_garbage_context_templates_are_rebuilt(model, cache, caplog) -> None:
    first = context_templates(model, ((3, 2),))
    (entry,) = (cache / "contexts").glob("*.json")
    entry.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert context_templates(model, ((3, 2),)) == first
    assert str(entry) in caplog.text


def test_statistics_take_every_requested_text(model, cache) -> None:
    texts = [f"w{i % 90} w{(i * 7) % 90}" for i in range(1500)]
    stats = key_statistics(model, [0], texts, samples=1500, max_len=4, progress=False, cache=False)[0]
    assert stats.meta["samples"] == 1500
    with pytest.raises(ValueError, match="1501 statistics samples requested but the texts given hold"):
        key_statistics(model, [0], texts, samples=1501, max_len=4, progress=False)
