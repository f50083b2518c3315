"""Entity vs relation perspective probes (docs/methods.md §10): case building, Wei et al. 2024's eqs. 6-7, scoring."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import full_rank_texts

import jaxedit
from jaxedit.edit import RomeHparams, apply, rome
from jaxedit.edit.stats import key_statistics
from jaxedit.edit.targets import TargetHparams
from jaxedit.evaluate.perspective import (
    METRICS,
    build_perspective_cases,
    evaluate_perspectives,
    reliability_generality,
    score_perspectives,
)
from jaxedit.evaluate.rspec import RelationPatterns

PATTERNS = RelationPatterns(
    relations_by_prefix={},
    prompts_by_relation={
        "P131": ("[X] is located in", "[X] is in", "[X] can be found in"),
        "P103": ("The native language of [X] is",),
    },
)
FACTS = [
    {"subject": "the eiffel tower", "template": "{} is located in", "attribute": " paris", "relation_id": "P131"},
    {"subject": "the colosseum", "template": "{} is located in", "attribute": " rome", "relation_id": "P131"},
    {"subject": "big ben", "template": "{} is in", "attribute": " rome", "relation_id": "P131"},
    {"subject": "danielle darrieux", "template": "the mother tongue of {} is", "attribute": " french",
     "relation_id": "P103"},
]  # fmt: skip
CONTEXTS = ["{}", "a w40 w41 . {}", "the w50 . {}"]


def test_cases_keep_one_part_of_the_fact_fixed_and_exclude_the_edit_wording() -> None:
    cases = build_perspective_cases(FACTS, PATTERNS, CONTEXTS)
    assert [c.subject for c in cases] == ["the eiffel tower", "the colosseum", "big ben"]  # P103: 1 wording
    eiffel, colosseum, ben = cases
    assert eiffel.entity_probes == ("the eiffel tower is in", "the eiffel tower can be found in")
    assert ben.entity_probes == ("big ben is located in", "big ben can be found in")
    assert eiffel.relation_probes == (
        "the eiffel tower is located in",
        "a w40 w41 . the eiffel tower is located in",
        "the w50 . the eiffel tower is located in",
    )
    # the next object of the same relation that differs from the true one (cyclically)
    assert (eiffel.target_new, colosseum.target_new, ben.target_new) == ("rome", "paris", "paris")
    assert eiffel.request.prompt == "{} is located in" and eiffel.request.target == "rome"
    assert len(build_perspective_cases(FACTS, PATTERNS, CONTEXTS, n=1)) == 1


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="lacks relation_id"):
        build_perspective_cases([{"subject": "x", "template": "{} is", "attribute": "y"}], PATTERNS, CONTEXTS)
    with pytest.raises(ValueError, match="no fact"):
        build_perspective_cases(FACTS[3:], PATTERNS, CONTEXTS)
    with pytest.raises(ValueError, match="no context"):
        build_perspective_cases(FACTS, PATTERNS, ["{}"])
    with pytest.raises(ValueError, match="rephrasing"):
        reliability_generality([True])


def test_reliability_and_generality_follow_paper_004_eqs_6_and_7() -> None:
    assert reliability_generality([True, True, False]) == (1.0, 0.5)
    assert reliability_generality([False, True, True]) == (0.0, 0.0)  # f(x~) = f(x) = y* needs both


@pytest.fixture(scope="module")
def model(tiny_dirs):
    tiny = jaxedit.load_model(tiny_dirs["llama_gqa_untied"])
    return tiny.replace(params=jax.tree.map(lambda a: a * 3 if a.ndim >= 2 else a, tiny.params))


def greedy(model, prompt: str) -> str:
    ids = np.asarray([jaxedit.core.tokens.encode_one(model.tokenizer, prompt)])
    return model.tokenizer.decode(
        [int(jax.numpy.argmax(jaxedit.forward(model.params, model.config, ids).logits[0, -1]))]
    )


def test_scores_equal_greedy_predictions_probe_by_probe(model) -> None:
    case = build_perspective_cases(FACTS, PATTERNS, CONTEXTS)[0]
    for family in ("entity", "relation"):
        probes = getattr(case, f"{family}_probes")
        target = greedy(model, probes[0]).strip()
        scores = score_perspectives(model, case, target)
        hits = [greedy(model, p).strip() == target for p in probes]
        assert scores[f"{family}_reliability"] == 100.0
        assert scores[f"{family}_generality"] == pytest.approx(100.0 * np.mean(hits[1:]))


def test_evaluation_scores_each_edit_alone_and_resumes(model, tmp_path) -> None:
    cases = build_perspective_cases(FACTS, PATTERNS, CONTEXTS)[:2]
    texts = full_rank_texts(model, [c.relation_probes[1] + " " + c.target_true for c in cases] * 8)
    stats = key_statistics(model, [1], texts, cache=False, progress=False)[1]
    hp = RomeHparams(layer=1, targets=TargetHparams(steps=5))
    templates = ["{}", "the city of rome . {}"]

    def editor(m, request):
        return rome(m, request, stats, hp, templates=templates)

    summary = evaluate_perspectives(model, cases, {"rome": editor}, out_dir=tmp_path, progress=False)
    assert set(summary) == {"unedited", "unedited (true object)", "rome"}
    assert all(row["n"] == 2 for row in summary.values())
    expected = [score_perspectives(apply(model, editor(model, c.request)), c) for c in cases]
    for metric in METRICS:
        assert summary["rome"][metric] == pytest.approx(np.mean([e[metric] for e in expected]))

    def fail(m, request):
        raise AssertionError("a cached case was edited again")

    again = evaluate_perspectives(model, cases, {"rome": fail}, out_dir=tmp_path, progress=False)
    assert again == summary
