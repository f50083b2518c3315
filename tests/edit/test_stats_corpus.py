"""Key statistics stream their corpus through `datasets` from every source it reads (issue 37, item 1):
each format gives the statistics of the same texts given as a list, a changed corpus is never served
from the cache, a streamed run resumes from its checkpoint, and a dataset name that is not in the local
Hugging Face cache is refused offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import cached_dataset, full_rank_texts, interrupt_after

import jaxedit
from jaxedit.data.corpus import open_corpus
from jaxedit.edit import stats as stats_lib
from jaxedit.edit.stats import key_statistics, read_corpus
from jaxedit.errors import InputError

SETTINGS = dict(max_len=16, batch_tokens=64, progress=False)  # four texts a batch


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return jaxedit.load_model(tiny_dirs["llama_gqa_untied"])


@pytest.fixture(scope="module")
def texts(model) -> list[str]:
    """14 texts of random vocabulary words (four batches, the last one short)."""
    return full_rank_texts(model, [], extra=14)


@pytest.fixture(scope="module")
def reference(model, texts):
    return key_statistics(model, [1], texts, cache=False, **SETTINGS)[1]


def _write(kind: str, texts: list[str], tmp: Path, monkeypatch: pytest.MonkeyPatch):
    """`texts` as a corpus of `kind` (a path, a name or a dataset object)."""
    rows = [{"id": i, "text": t, "title": f"t{i}"} for i, t in enumerate(texts)]
    table = datasets.Dataset.from_list(rows)
    if kind == "jsonl":
        (tmp / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return tmp / "c.jsonl"
    if kind == "json-records":
        (tmp / "c.json").write_text(json.dumps(rows))
        return tmp / "c.json"
    if kind == "json-strings":
        (tmp / "c.json").write_text(json.dumps(texts))
        return tmp / "c.json"
    if kind == "parquet":
        table.to_parquet(str(tmp / "c.parquet"))
        return tmp / "c.parquet"
    if kind == "csv":
        table.to_csv(str(tmp / "c.csv"), index=False)
        return str(tmp / "c.csv")
    if kind == "arrow":  # the Arrow file `save_to_disk` writes
        table.save_to_disk(str(tmp / "saved"))
        (arrow,) = (tmp / "saved").glob("*.arrow")
        return arrow.rename(tmp / "c.arrow")
    if kind == "txt":  # blank-line separated blocks, padded with blank lines and spaces
        (tmp / "c.txt").write_text("\n\n\n".join(f"  {t} " for t in texts) + "\n\n")
        return tmp / "c.txt"
    if kind == "folder":  # text files, a jsonl, a README the reader leaves out, read in name order
        (tmp / "d" / "b").mkdir(parents=True)
        (tmp / "d" / "a.txt").write_text("\n\n".join(texts[:5]))
        (tmp / "d" / "b" / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[5:9]))
        (tmp / "d" / "b" / "d.raw").write_text("\n\n".join(texts[9:]))
        (tmp / "d" / "README.md").write_text("not a text of the corpus")
        return tmp / "d"
    if kind == "saved":
        datasets.DatasetDict({"train": table}).save_to_disk(str(tmp / "saved"))
        return tmp / "saved"
    if kind == "dataset":
        return table
    if kind == "iterable":
        return table.to_iterable_dataset(num_shards=2)
    if kind == "cached-name":
        cached_dataset(tmp / "hf", rows, "jaxedit_tiny_corpus")
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp / "hf"))
        return "jaxedit_tiny_corpus"
    raise AssertionError(kind)


KINDS = ["jsonl", "json-records", "json-strings", "parquet", "csv", "arrow", "txt", "folder", "saved",
         "dataset", "iterable", "cached-name"]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_gives_the_statistics_of_the_same_texts(
    model, texts, reference, kind, tmp_path, monkeypatch
):
    source = _write(kind, texts, tmp_path, monkeypatch)
    assert list(open_corpus(source)) == texts
    got = key_statistics(model, [1], corpus=source, cache=False, **SETTINGS)[1]
    np.testing.assert_allclose(got.matrix, reference.matrix, rtol=1e-6, atol=1e-8)
    assert got.tokens == reference.tokens
    assert got.meta["texts"] == reference.meta["texts"] and got.meta["samples"] == len(texts)
    if isinstance(source, str | Path):
        assert read_corpus(source) == texts  # the list reader, over the same streams
    some = key_statistics(model, [1], corpus=source, samples=5, cache=False, **SETTINGS)[1]
    np.testing.assert_allclose(
        some.matrix,
        key_statistics(model, [1], texts[:5], cache=False, **SETTINGS)[1].matrix,
        rtol=1e-6,
        atol=1e-8,
    )


def test_the_cache_key_follows_the_corpus_contents(model, texts, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXEDIT_CACHE", str(tmp_path / "cache"))
    path = _write("jsonl", texts, tmp_path, monkeypatch)
    first = key_statistics(model, [1], corpus=path, **SETTINGS)[1]
    assert first.meta["corpus"] == str(path.resolve())
    calls = []
    real = stats_lib._accumulate
    monkeypatch.setattr(stats_lib, "_accumulate", lambda *a: calls.append(1) or real(*a))
    np.testing.assert_array_equal(key_statistics(model, [1], corpus=path, **SETTINGS)[1].matrix, first.matrix)
    assert not calls  # served from the cache
    changed = [*texts[:-1], texts[-1] + " rome"]  # same size, one text changed
    _write("jsonl", changed, tmp_path, monkeypatch)
    again = key_statistics(model, [1], corpus=path, **SETTINGS)[1]
    assert calls and again.meta["texts"] != first.meta["texts"]
    assert not np.allclose(again.matrix, first.matrix)


def test_a_streamed_run_resumes_from_its_checkpoint(model, texts, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXEDIT_CACHE", str(tmp_path / "cache"))
    path = _write("jsonl", texts, tmp_path, monkeypatch)
    real, calls = stats_lib._accumulate, []
    interrupt_after(monkeypatch, stats_lib, "_accumulate", 2)  # after two batches, each checkpointed
    with pytest.raises(KeyboardInterrupt):
        key_statistics(model, [1], corpus=path, corpus_id="texts", checkpoint_every=1, **SETTINGS)
    monkeypatch.setattr(stats_lib, "_accumulate", lambda *a: calls.append(1) or real(*a))
    resumed = key_statistics(model, [1], corpus=path, corpus_id="texts", checkpoint_every=1, **SETTINGS)[1]
    assert len(calls) == 2  # the two batches after the checkpoint
    np.testing.assert_allclose(resumed.matrix, reference.matrix, rtol=1e-6, atol=1e-8)
    assert resumed.tokens == reference.tokens


def test_missing_names_paths_and_fields_are_refused_in_one_line(model, texts, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    before = os.environ.get("HF_DATASETS_OFFLINE"), datasets.config.HF_HUB_OFFLINE
    with pytest.raises(InputError, match="nor a dataset in the local Hugging Face cache") as err:
        key_statistics(model, [1], corpus="jaxedit-no-such-corpus", **SETTINGS)
    assert "\n" not in str(err.value) and "never downloaded" in str(err.value)
    assert (os.environ.get("HF_DATASETS_OFFLINE"), datasets.config.HF_HUB_OFFLINE) == before  # restored
    with pytest.raises(InputError, match="does not exist"):
        key_statistics(model, [1], corpus=tmp_path / "missing.jsonl", **SETTINGS)
    path = _write("jsonl", texts, tmp_path, monkeypatch)
    with pytest.raises(InputError, match="no 'body' column"):
        key_statistics(model, [1], corpus=path, text_field="body", **SETTINGS)
    with pytest.raises(InputError, match=r"requested but corpus .* holds only 14"):
        key_statistics(model, [1], corpus=path, samples=15, **SETTINGS)
