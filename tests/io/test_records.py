"""Records from every source `datasets` reads: JSON list, JSON lines, parquet, arrow, csv, a saved dataset
folder, a Dataset in memory; the benchmark readers give the same cases from each."""

from __future__ import annotations

import json

import datasets
import pytest
from conftest import cached_dataset

from jaxedit.data.records import read_records
from jaxedit.errors import InputError
from jaxedit.evaluate import read_counterfact
from jaxedit.evaluate.zsre import read_zsre
from jaxedit.lens.relation import read_lens_facts

KNOWN = [
    {"known_id": i, "subject": s, "attribute": a, "template": "{} is located in the city of",
     "prompt": f"{s} is located in the city of", "relation_id": "P131"}
    for i, (s, a) in enumerate([("the eiffel tower", "paris"), ("the colosseum", "rome"), ("big ben", "london")])
]  # fmt: skip
COUNTERFACT = [
    {"case_id": 7, "requested_rewrite": {"prompt": "the mother tongue of {} is", "subject": "danielle darrieux",
     "target_new": {"str": "english"}, "target_true": {"str": "french"}},
     "paraphrase_prompts": ["the language of danielle darrieux is"], "neighborhood_prompts": ["the language of paris is"],
     "generation_prompts": ["danielle darrieux is"]},
    {"case_id": 8, "requested_rewrite": {"prompt": "{} is located in the city of", "subject": "the eiffel tower",
     "target_new": {"str": "rome"}, "target_true": {"str": "paris"}},
     "paraphrase_prompts": ["the city of the eiffel tower is"], "neighborhood_prompts": ["the capital of france is"],
     "generation_prompts": ["the eiffel tower is"]},
]  # fmt: skip
ZSRE = [
    {"subject": "danielle darrieux", "src": "what is the mother tongue of danielle darrieux?", "alt": "english",
     "rephrase": "which language did danielle darrieux speak?", "loc": "nq question: who wrote hamlet",
     "loc_ans": "shakespeare", "answers": ["french"]},
]  # fmt: skip


def written(tmp_path, records: list[dict], fmt: str):
    """`records` written in format `fmt` by `datasets` (or by hand for the JSON list)."""
    if fmt == "json-list":
        path = tmp_path / "records.json"
        path.write_text(json.dumps(records))
        return path
    dataset = datasets.Dataset.from_list(records)
    if fmt == "dataset":
        return dataset
    if fmt == "folder":
        dataset.save_to_disk(str(tmp_path / "saved"))
        return tmp_path / "saved"
    if fmt == "arrow":
        dataset.save_to_disk(str(tmp_path / "saved"))
        return next((tmp_path / "saved").glob("*.arrow"))
    path = tmp_path / f"records.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "parquet":
        dataset.to_parquet(str(path))
    elif fmt == "csv":
        dataset.to_csv(str(path), index=False)
    return path


@pytest.mark.parametrize("fmt", ["json-list", "jsonl", "parquet", "arrow", "csv", "folder", "dataset"])
def test_flat_facts_read_alike_from_every_format(tmp_path, fmt) -> None:
    assert read_records(written(tmp_path, KNOWN, fmt)) == KNOWN
    assert [f.prompt for f in read_lens_facts(written(tmp_path, KNOWN, fmt))] == [r["prompt"] for r in KNOWN]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "arrow", "folder", "dataset"])
def test_nested_benchmark_records_give_the_same_cases(tmp_path, fmt) -> None:
    expected = read_counterfact(written(tmp_path, COUNTERFACT, "json-list"))
    assert read_counterfact(written(tmp_path, COUNTERFACT, fmt)) == expected
    assert read_zsre(written(tmp_path, ZSRE, fmt)) == read_zsre(written(tmp_path, ZSRE, "json-list"))


def test_bad_sources_are_one_line_errors(tmp_path) -> None:
    cases = [
        (tmp_path / "missing.json", "no such file"),
        (tmp_path, "not a saved dataset"),
        (tmp_path / "records.txt", "records are read from"),
    ]
    (tmp_path / "records.txt").write_text("x")
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "one.json").write_text('{"a": 1}')
    (tmp_path / "broken.jsonl").write_text('{"a": 1\n')
    cases += [(tmp_path / "empty.json", "holds no records"), (tmp_path / "one.json", "one JSON object"),
              (tmp_path / "broken.jsonl", "cannot read records"), (42, "got int")]  # fmt: skip
    for source, match in cases:
        with pytest.raises(InputError, match=match) as err:
            read_records(source)
        assert "\n" not in str(err.value)


def test_records_from_a_dataset_in_the_local_hugging_face_cache(tmp_path, monkeypatch) -> None:
    import datasets

    rows = [{"prompt": f"fact {i} is", "attribute": f"a{i}"} for i in range(4)]
    (tmp_path / "hf").mkdir()
    cached_dataset(tmp_path / "hf", rows, "jaxedit_tiny_facts")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    assert read_records("jaxedit_tiny_facts") == rows
    with pytest.raises(ValueError, match="records 'no_such_facts' is no file or folder"):
        read_records("no_such_facts")
    with pytest.raises(ValueError, match="no such file or dataset folder"):
        read_records("./missing.json")
