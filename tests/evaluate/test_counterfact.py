"""CounterFact evaluation: both layouts, probabilities against a direct computation, metrics, resumable runs."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from records import EASYEDIT_RECORD, ROME_RECORD

import jaxedit
from jaxedit.edit import Delta
from jaxedit.evaluate import evaluate_counterfact, read_counterfact, score_case
from jaxedit.evaluate.counterfact import score_cases
from jaxedit.evaluate.metrics import generation_entropy, harmonic_mean, ngram_entropy
from jaxedit.runtime.execution import Execution

QUIET = Execution(progress=False)


@pytest.fixture(scope="module")
def model(tiny_dirs):
    tiny = jaxedit.load_model(tiny_dirs["llama_gqa_untied"])
    return tiny.replace(params=jax.tree.map(lambda a: a * 3 if a.ndim >= 2 else a, tiny.params))


def test_reads_both_layouts(tmp_path) -> None:
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([ROME_RECORD, EASYEDIT_RECORD]))
    rome_case, easy_case = read_counterfact(path)
    assert rome_case.request.text == "the mother tongue of danielle darrieux is"
    assert (rome_case.target_true, len(rome_case.paraphrases), len(rome_case.neighborhood)) == (
        "french",
        2,
        2,
    )
    assert easy_case.request.prompt == "{} is located in the city of" and easy_case.request.target == "rome"
    assert easy_case.paraphrases == ("the city of the eiffel tower is",) and easy_case.layout == "easyedit"
    (tmp_path / "bad.json").write_text(json.dumps([{"question": "x"}]))
    with pytest.raises(ValueError, match="not a CounterFact record"):
        read_counterfact(tmp_path / "bad.json")


def probability(model, prompt: str, target: str) -> float:
    """Length-normalised P(target | prompt), one token at a time with full forwards."""
    ids = jaxedit.core.tokens.encode_one(model.tokenizer, prompt)
    targets = model.tokenizer(" " + target, add_special_tokens=False)["input_ids"]
    nll = []
    for token in targets:
        logits = jaxedit.forward(model.params, model.config, np.asarray([ids])).logits[0, -1]
        nll.append(-float(jax.nn.log_softmax(logits)[token]))
        ids = [*ids, token]
    return float(np.exp(-np.mean(nll)))


def test_case_metrics_match_direct_probabilities(model, tmp_path) -> None:
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([ROME_RECORD]))
    (case,) = read_counterfact(path)
    got = score_case(model, case, generation_tokens=5)
    new = [
        probability(model, p, "english") for p in [case.request.text, *case.paraphrases, *case.neighborhood]
    ]
    true = [
        probability(model, p, "french") for p in [case.request.text, *case.paraphrases, *case.neighborhood]
    ]
    np.testing.assert_allclose(got["p_new"], new, rtol=1e-4)
    np.testing.assert_allclose(got["p_true"], true, rtol=1e-4)
    assert got["ES"] == float(new[0] > true[0])
    assert got["PS"] == np.mean([n > t for n, t in zip(new[1:3], true[1:3], strict=True)])
    assert got["NS"] == np.mean([t > n for n, t in zip(new[3:], true[3:], strict=True)])
    assert got["token_acc_locality"] == 1.0  # no reference given: compared with itself
    assert len(got["generations"]) == 1 and got["fluency"] >= 0


def test_entropy_and_harmonic_mean() -> None:
    h2 = -(2 / 3 * np.log2(2 / 3) + 1 / 3 * np.log2(1 / 3))
    assert ngram_entropy("a b a b", 2) == pytest.approx(h2)
    assert ngram_entropy("a b a b", 3) == pytest.approx(1.0)
    assert generation_entropy(["a b a b"]) == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert harmonic_mean([100, 50, 100]) == pytest.approx(75.0)
    assert harmonic_mean([100, 0]) == 0.0


def test_evaluation_is_resumable_and_summarises(model, tmp_path) -> None:
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([ROME_RECORD, EASYEDIT_RECORD]))
    cases = read_counterfact(path)
    rng = np.random.default_rng(0)
    c = model.config

    def edit(m, request):
        return Delta(
            layers=(1,),
            left=rng.normal(size=(1, 1, c.d_mlp)),
            right=rng.normal(size=(1, 1, c.d_model)),
            method="test",
        )

    out = tmp_path / "run"
    first = evaluate_counterfact(
        model, cases, edit, method="test", out_dir=out, generation_tokens=4, execution=QUIET
    )
    assert first["unedited"]["n"] == 2 and first["test"]["n"] == 2
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["7.json", "8.json"]
    assert json.loads((out / "summary.json").read_text())["test"] == first["test"]

    def must_not_run(m, request):
        raise AssertionError("cached cases must not be edited again")

    again = evaluate_counterfact(
        model, cases, must_not_run, method="test", out_dir=out, generation_tokens=4, execution=QUIET
    )
    assert again["test"] == first["test"]
    es = [json.loads((out / "cases" / f"{i}.json").read_text())["post"]["ES"] for i in (7, 8)]
    assert first["test"]["ES"] == pytest.approx(100 * np.mean(es))


def test_unedited_scores_are_shared_across_methods(model, tmp_path, monkeypatch) -> None:
    from jaxedit.evaluate import counterfact

    path = tmp_path / "cf.json"
    path.write_text(json.dumps([ROME_RECORD, EASYEDIT_RECORD]))
    cases = read_counterfact(path)
    c = model.config
    zero = Delta(layers=(1,), left=np.zeros((1, 1, c.d_mlp)), right=np.zeros((1, 1, c.d_model)), method="z")
    shared = tmp_path / "unedited"
    first = evaluate_counterfact(
        model, cases, lambda m, r: zero, method="a", out_dir=tmp_path / "a", unedited_dir=shared,
        generation_tokens=0, execution=QUIET,
    )  # fmt: skip
    assert sorted(p.name for p in (shared / "cases").iterdir()) == ["7.json", "8.json"]
    calls = []
    original = counterfact.score_cases
    monkeypatch.setattr(counterfact, "score_cases", lambda *a, **k: calls.append(k) or original(*a, **k))
    second = evaluate_counterfact(
        model, cases, lambda m, r: zero, method="b", out_dir=tmp_path / "b", unedited_dir=shared,
        generation_tokens=0, execution=QUIET,
    )  # fmt: skip
    assert len(calls) == 2 and all(k["reference"] is not None for k in calls)  # edited rows only
    assert second["unedited"] == first["unedited"]


def test_an_interrupted_batch_rescores_only_its_missing_cases(model, tmp_path, monkeypatch) -> None:
    from jaxedit.evaluate import counterfact

    path = tmp_path / "cf.json"
    path.write_text(json.dumps([ROME_RECORD, EASYEDIT_RECORD]))
    cases = read_counterfact(path)
    c = model.config
    zero = Delta(layers=(1,), left=np.zeros((1, 1, c.d_mlp)), right=np.zeros((1, 1, c.d_model)), method="z")
    out = tmp_path / "run"

    def run() -> dict:
        return evaluate_counterfact(
            model,
            cases,
            lambda m, rs: zero,
            method="b",
            batch=2,
            out_dir=out,
            generation_tokens=0,
            execution=QUIET,
        )

    first = run()
    (out / "cases" / "8.json").unlink()  # as if the run stopped after scoring case 7
    calls = []
    original = counterfact.score_cases
    monkeypatch.setattr(
        counterfact,
        "score_cases",
        lambda m, chunk, **k: calls.append([c.case_id for c in chunk]) or original(m, chunk, **k),
    )
    again = run()
    assert calls == [["8"], ["8"]] and again["b"] == first["b"]  # case 8 scored before and after, 7 reused


def test_batched_scoring_equals_one_case_at_a_time(model, tmp_path) -> None:
    """Shared forward batches and several cases' generations per call (sampled, groups of 1, 2 and 3
    prompts) give each case what scoring it alone gives; R-Specificity and locality included."""
    import dataclasses

    three = dict(ROME_RECORD, case_id=9, generation_prompts=["the language of paris is", "w40 is", "w41 w42"])
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([ROME_RECORD, EASYEDIT_RECORD, three]))
    cases = read_counterfact(path)
    cases[1] = dataclasses.replace(cases[1], rspec=(("the capital of france is", "paris"), ("w40 is", "w41")))
    edited = model.replace(params=jax.tree.map(lambda a: a * 1.1 if a.ndim >= 2 else a, model.params))
    alone = [score_case(edited, c, reference=model, generation_tokens=6, seed=3) for c in cases]
    for rows in (3, 6):  # all in one generation call, or split between calls
        together = score_cases(
            edited, cases, reference=model, generation_tokens=6, seed=3, generation_rows=rows
        )
        for a, b in zip(alone, together, strict=True):
            assert a.keys() == b.keys()
            for key, value in a.items():
                if key in ("p_new", "p_true", "EM", "PM", "NM"):
                    np.testing.assert_allclose(b[key], value, rtol=1e-5, atol=1e-7)
                else:
                    assert b[key] == value, key
    assert "RS_spec" in alone[1] and "token_acc_locality" in alone[0]
    assert len({tuple(r["generations"]) for r in alone}) == 3  # real samples, not one text repeated


def test_edited_models_scored_together_equal_each_alone(model, tmp_path) -> None:
    """`score_edited_cases` (teacher-forced scores per edited model, the generations of every edited model
    in shared calls with per-row deltas) gives each case what scoring its edited model alone gives; an
    edit beyond the MLP output kernels is scored alone."""
    from jaxedit.edit import apply
    from jaxedit.evaluate.counterfact import score_edited_cases

    three = dict(ROME_RECORD, case_id=9, generation_prompts=["the language of paris is", "w40 is", "w41 w42"])
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([ROME_RECORD, EASYEDIT_RECORD, three]))
    cases = read_counterfact(path)
    rng = np.random.default_rng(5)
    c = model.config

    def delta(layers: tuple[int, ...], rank: int, site: str = "mlp") -> Delta:
        width = c.d_mlp if site == "mlp" else c.n_heads * c.head_dim
        shape = (len(layers), rank)
        return Delta(
            layers=layers, left=rng.normal(size=(*shape, width)), right=rng.normal(size=(*shape, c.d_model)),
            method="test", site=site,
        )  # fmt: skip

    unedited = [score_case(model, case, generation_tokens=6, seed=3)["generations"] for case in cases]
    for deltas in ([delta((1,), 1), delta((0, 2), 2), delta((1,), 1)], [delta((1,), 1), delta((1,), 1, "attn"), delta((2,), 1)]):  # fmt: skip
        alone = [
            score_case(apply(model, d), case, reference=model, generation_tokens=6, seed=3)
            for case, d in zip(cases, deltas, strict=True)
        ]
        for rows in (3, 6):  # every generation in one call, or split between calls
            together = score_edited_cases(
                model, cases, deltas, generation_tokens=6, seed=3, generation_rows=rows
            )
            for a, b in zip(alone, together, strict=True):
                assert a.keys() == b.keys()
                for key, value in a.items():
                    if key in ("p_new", "p_true", "EM", "PM", "NM", "fluency"):
                        np.testing.assert_allclose(b[key], value, rtol=1e-5, atol=1e-7)
                    else:
                        assert b[key] == value, key
        # the edits matter: some edited case generates other text than the unedited model
        assert any(u != r["generations"] for u, r in zip(unedited, alone, strict=True))
