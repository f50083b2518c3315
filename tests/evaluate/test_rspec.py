"""R-Specificity (docs/methods.md §12): the prompt builder never asks the edited relation; the metric."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxedit
from jaxedit.evaluate import read_counterfact
from jaxedit.evaluate.counterfact import score_case, summarise
from jaxedit.evaluate.metrics import target_scores
from jaxedit.evaluate.rspec import attach_rspec, candidate_prompts, read_patterns, read_trex, rspec_score

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PATTERNS = {
    "P103": ["The mother tongue of [X] is [Y].", "[Y] is the mother tongue of [X]."],
    "P1412": ["[X] used to communicate in [Y].", "The language of [X] is [Y]."],
    "P37": ["The language of [X] is [Y]."],  # shares a phrasing with P1412
    "P19": ["[X] was born in [Y]."],
}
TREX = {
    "P103": [("danielle darrieux", "french")],
    "P1412": [("danielle darrieux", "french"), ("rome", "english")],
    "P19": [("danielle darrieux", "paris"), ("rome", "paris")],
    "P37": [("france", "french")],
}


@pytest.fixture(scope="module")
def pararel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pararel")
    for sub, table in (("patterns", PATTERNS), ("trex_lms_vocab", TREX)):
        (root / sub).mkdir()
        for relation, rows in table.items():
            lines = [
                json.dumps({"pattern": r} if sub == "patterns" else {"sub_label": r[0], "obj_label": r[1]})
                for r in rows
            ]
            (root / sub / f"{relation}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_builder_never_asks_the_edited_relation(pararel) -> None:
    patterns, trex = read_patterns(pararel), read_trex(pararel)
    assert patterns.relations_of("The language of rome is", "rome") == {"P1412", "P37"}
    found = candidate_prompts(
        "danielle darrieux", "The mother tongue of danielle darrieux is", patterns, trex, {}
    )
    assert [(p.prompt, p.relation) for p in found] == [
        ("danielle darrieux used to communicate in", "P1412"),
        ("danielle darrieux was born in", "P19"),
    ]
    # an ambiguous edit prompt excludes every relation it may express
    found = candidate_prompts("rome", "The language of rome is", patterns, trex, {})
    assert {p.relation for p in found} == {"P19", "P103"}  # P103 co-occurs with P1412 (danielle darrieux)
    # a prompt whose relation is unknown gets nothing; Relation_Specificity prompts need a known relation
    assert candidate_prompts("rome", "rome is famous for", patterns, trex, {}) == []
    extra = {"danielle darrieux": ["The mother tongue of danielle darrieux is", "danielle darrieux likes"]}
    found = candidate_prompts("danielle darrieux", "danielle darrieux was born in", patterns, trex, extra)
    assert [p.relation for p in found] == ["P103", "P1412"]  # the unknown "likes" prompt is not used


@pytest.mark.skipif(not (SHARED / "pararel").exists(), reason="../shared/data not present")
def test_on_counterfact_no_emitted_prompt_expresses_the_edited_relation() -> None:
    patterns, trex = (
        read_patterns(SHARED / "pararel", SHARED / "rets" / "known_1000.json"),
        read_trex(SHARED / "pararel"),
    )
    cases = read_counterfact(SHARED / "counterfact_easyedit" / "counterfact-edit.json")[:300]
    emitted = 0
    for case in cases:
        subject, prompt = case.request.subject, case.request.text
        edited = patterns.relations_of(prompt, subject)
        for found in candidate_prompts(subject, prompt, patterns, trex, {}, limit=5):
            emitted += 1
            assert found.relation not in edited
            assert not patterns.relations_of(found.prompt, subject) & edited
    assert emitted > 300


def test_metric_and_rets_score(tiny_dirs, pararel) -> None:
    tiny = jaxedit.load_model(tiny_dirs["llama_gqa_untied"])
    model = tiny.replace(params=jax.tree.map(lambda a: a * 3 if a.ndim >= 2 else a, tiny.params))
    pairs = [("danielle darrieux was born in", "paris"), ("danielle darrieux used to communicate in", "rome")]
    nll, _, _ = target_scores(model, [(p, t) for p, o in pairs for t in (o, "english")])
    expected = float(np.mean(np.exp(-nll[0::2]) > np.exp(-nll[1::2])))
    assert rspec_score(model, pairs, "english") == expected
    record = {
        "case_id": 0, "prompt": "The mother tongue of danielle darrieux is", "subject": "danielle darrieux",
        "target_new": "english", "ground_truth": "french", "rephrase_prompt": "danielle darrieux speaks",
        "locality_prompt": "the capital of france is",
    }  # fmt: skip
    path = pararel.parent / "cf.json"
    path.write_text(json.dumps([record]))
    (case,) = attach_rspec(model, read_counterfact(path), pararel)
    assert [p for p, _ in case.rspec] == [
        "danielle darrieux used to communicate in",
        "danielle darrieux was born in",
    ]
    row = score_case(model, case, generation_tokens=0)
    assert row["RS_spec"] == rspec_score(model, case.rspec, "english")
    summary = summarise([row])
    parts = [summary[k] for k in ("ES", "PS", "NS", "RS_spec")]
    assert summary["score_rets"] == pytest.approx(np.mean(parts), abs=0.01)


def test_pararel_files_in_other_formats_read_alike(pararel, tmp_path) -> None:
    """The same ParaRel folder with its relation files as parquet reads to the same patterns and facts."""
    import datasets

    from jaxedit.data.records import read_records
    from jaxedit.evaluate.rspec import read_patterns, read_trex

    for sub in ("patterns", "trex_lms_vocab"):
        (tmp_path / sub).mkdir()
        for path in sorted((pararel / sub).glob("P*.jsonl")):
            datasets.Dataset.from_list(read_records(path)).to_parquet(tmp_path / sub / f"{path.stem}.parquet")
    assert read_patterns(tmp_path) == read_patterns(pararel)
    assert read_trex(tmp_path) == read_trex(pararel)
