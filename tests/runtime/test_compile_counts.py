"""New input shapes fall into a few compiled buckets: the programs an edit loop and the scoring compile
stay bounded as the inputs vary (issue 35)."""

from __future__ import annotations

import jax
import pytest

import jaxedit
from jaxedit.edit.requests import Request
from jaxedit.edit.targets import TargetHparams, optimise_targets
from jaxedit.evaluate.counterfact import CounterfactCase, score_cases
from jaxedit.runtime.compile_log import compile_log

WORDS = ["w40", "w41", "w42", "w43", "w44", "w45", "w46", "w47", "w48"]


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return jaxedit.load_model(tiny_dirs["llama_gqa_untied"])


def requested(log, name: str) -> int:
    """Programs of this name the block asked for: compiled, or loaded from the persistent cache."""
    return sum(1 for n, _ in (*log.compiles, *log.cached) if n == name)


def test_edits_of_varied_lengths_share_a_few_optimisation_loops(model) -> None:
    jax.clear_caches()
    with compile_log() as log:
        for n in range(1, 9):  # subjects of 1 to 8 words, targets of 1 or 2 words
            subject = " ".join(WORDS[:n])
            target = "rome" if n % 2 else "rome paris"
            request = Request(prompt="the city of {} is", subject=subject, target=target)
            optimise_targets(model, [request], 1, ["{}", "the w50 w51 . {}"], TargetHparams(steps=2))
    assert requested(log, "jit(target_loop)") <= 4
    assert requested(log, "jit(target_prepass)") <= 2  # one per token-length bucket


def test_scoring_cases_of_varied_lengths_shares_a_few_programs(model) -> None:
    jax.clear_caches()
    with compile_log() as log:
        for n in range(1, 9):
            subject = " ".join(WORDS[:n])
            case = CounterfactCase(
                case_id=n, request=Request(prompt="the city of {} is", subject=subject, target="rome"),
                target_true="paris", paraphrases=(f"{subject} is in the city of",),
                neighborhood=("the city of w60 is",), generation_prompts=(f"{subject} is",), layout="rome",
            )  # fmt: skip
            score_cases(model, [case], reference=model, generation_tokens=3)
    assert requested(log, "jit(_generate)") <= 2
    assert requested(log, "jit(_logits_at)") <= 3
