"""zsRE evaluation: both layouts, token accuracy against a direct computation, summaries."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from records import KNOWEDIT, MEND

import jaxedit
from jaxedit.evaluate.zsre import evaluate_zsre, read_zsre, score_zsre_case
from jaxedit.runtime.execution import Execution

QUIET = Execution(progress=False)
UNEDITABLE = {**MEND, "subject": "someone else"}
PROMPTS = [MEND["src"], MEND["loc"]]


@pytest.fixture(scope="module")
def model(tiny_dirs):
    tiny = jaxedit.load_model(tiny_dirs["llama_gqa_untied"])
    return tiny.replace(params=jax.tree.map(lambda a: a * 3 if a.ndim >= 2 else a, tiny.params))


def accuracy(model, prompt: str, answer: str) -> float:
    """Fraction of answer tokens that are the top-1 prediction given the prompt and earlier answer tokens."""
    ids = jaxedit.core.tokens.encode_one(model.tokenizer, prompt)
    hits = []
    for token in model.tokenizer(" " + answer, add_special_tokens=False)["input_ids"]:
        logits = jaxedit.forward(model.params, model.config, np.asarray([ids])).logits[0, -1]
        hits.append(int(np.argmax(logits)) == token)
        ids = [*ids, token]
    return float(np.mean(hits))


def test_reads_both_layouts_and_counts_uneditable_records(tmp_path) -> None:
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([MEND, KNOWEDIT, UNEDITABLE]))
    cases, skipped = read_zsre(path)
    assert skipped == 1 and [c.layout for c in cases] == ["mend", "knowedit"]
    assert cases[0].request.prompt == "the mother tongue of {} is" and cases[0].locality[0][1] == "paris"
    assert cases[1].request.target == "rome" and cases[1].locality == (("the eiffel tower is in", "france"),)


def test_token_accuracy_matches_a_direct_computation(model, tmp_path) -> None:
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([MEND, KNOWEDIT]))
    cases, _ = read_zsre(path)
    for case in cases:
        got = score_zsre_case(model, case)
        assert got["ES"] == accuracy(model, case.request.text, case.request.target)
        assert got["PS"] == accuracy(model, case.rephrase, case.request.target)
        assert got["NS"] == np.mean([accuracy(model, p, a) for p, a in case.locality])


def test_summary_score_is_the_mean(model, tmp_path) -> None:
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([MEND, KNOWEDIT]))
    cases, _ = read_zsre(path)
    summary = evaluate_zsre(model, cases, None, method="none", out_dir=tmp_path / "run", execution=QUIET)
    row = summary["unedited"]
    assert row["n"] == 2
    assert row["score"] == pytest.approx(np.mean([row["ES"], row["PS"], row["NS"]]), abs=0.01)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["unedited"] == row


def test_chunked_evaluation_equals_case_by_case_and_resumes(model, tmp_path) -> None:
    """`execution.score_cases` cases share forward batches; the per-case rows equal one case at a time, and a rerun
    whose files are all present scores nothing (the chunk's cases were written together)."""
    from jaxedit.edit import Delta

    texts = jaxedit.generate_text(model, PROMPTS, max_new_tokens=2)
    answer = {p: t.strip() for p, t in zip(PROMPTS, texts, strict=True)}
    known = {**MEND, "alt": answer[MEND["src"]], "loc_ans": answer[MEND["loc"]]}  # the model's own answers
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([known, KNOWEDIT] * 3))
    cases, _ = read_zsre(path)
    c = model.config
    rng = np.random.default_rng(0)
    delta = Delta(
        layers=(1,),
        left=rng.normal(size=(1, 1, c.d_mlp)),
        right=rng.normal(size=(1, 1, c.d_model)),
        method="t",
    )
    runs = {}
    for chunk in (1, 4):
        out = tmp_path / f"chunk{chunk}"
        runs[chunk] = evaluate_zsre(
            model,
            cases,
            lambda m, rs: delta,
            method="t",
            batch=6,
            out_dir=out,
            execution=Execution(score_cases=chunk, progress=False),
        )
    for name in ("unedited", "t"):
        assert runs[1][name] == runs[4][name]
    for case in cases:
        one, four = (
            json.loads((tmp_path / f"chunk{k}" / "cases" / f"{case.case_id}.json").read_text())
            for k in (1, 4)
        )
        assert one["pre"] == four["pre"] and one["post"] == four["post"]
    assert runs[4]["unedited"]["ES"] > 0 and runs[4]["unedited"]["NS"] > 0  # rows that can differ
    assert runs[4]["t"] != runs[4]["unedited"]

    def must_not_score(*args, **kwargs):
        raise AssertionError("every case was saved: nothing is scored again")

    again = evaluate_zsre(
        model,
        cases,
        must_not_score,
        method="t",
        batch=6,
        out_dir=tmp_path / "chunk4",
        execution=Execution(score_cases=4, progress=False),
    )
    assert again["t"] == runs[4]["t"]
    with pytest.raises(ValueError, match="score_cases"):
        Execution(score_cases=0)
