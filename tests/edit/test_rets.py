"""RETS on a tiny model (docs/methods.md §8): the update's constraint, the reduction to ROME, the subject
constraint, the KL prompt variants and bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import full_rank_texts

import jaxedit
from jaxedit.core import tokens as tok
from jaxedit.edit import apply, rome
from jaxedit.edit.reads import last_token_taps
from jaxedit.edit.requests import Request
from jaxedit.edit.rets import RetsHparams, last_token_keys, rets, subject_constraint
from jaxedit.edit.rome import RomeHparams
from jaxedit.edit.stats import key_statistics
from jaxedit.edit.targets import TargetHparams, build_batch, optimise_targets

REQUEST = Request(prompt="the mother tongue of {} is", subject="danielle darrieux", target="english")
OTHERS = [
    {"prompt": "the capital of {} is", "subject": "france", "target": "paris"},
    {"prompt": "{} is located in the city of", "subject": "the eiffel tower", "target": "rome"},
    {"prompt": "the language of {} is", "subject": "rome", "target": "english"},
    {"prompt": "the mother tongue of {} is", "subject": "danielle darrieux", "target": "french"},
]
TEXTS = [
    "the eiffel tower is located in the city of paris in france",
    "the capital of france is paris and the language is french",
    "danielle darrieux was french and the mother tongue of danielle darrieux is french",
    "rome is the capital city of a w40 w41 w42 on the w50",
] * 8
TEMPLATES = ["{}", "the city of rome . {}", "a tower in paris was w44 . {}"]
LAYER = 1
HP = RetsHparams(
    layer=LAYER,
    targets=dataclasses.replace(TargetHparams(key_token="last", kl_prompt="{prompt} is a"), steps=8),
)


@pytest.fixture(scope="module")
def stats(model):
    return key_statistics(model, [LAYER], full_rank_texts(model, TEXTS), cache=False, progress=False)[LAYER]


def edited_kernel(model, delta) -> np.ndarray:
    return np.asarray(apply(model, delta).params["layers"]["mlp"]["out"]["kernel"][LAYER], np.float64)


def test_update_maps_the_mean_relation_key_to_the_target_value(model, stats) -> None:
    constraint = np.eye(model.config.d_mlp) * 3.0
    delta = rets(model, REQUEST, stats, HP, constraint=constraint, templates=TEMPLATES)
    targets = optimise_targets(model, [REQUEST], LAYER, TEMPLATES, HP.targets)
    value = targets.m0[0] + targets.delta[0]  # v* (no MLP bias in Llama)
    mapped = targets.key_mean[0] @ edited_kernel(model, delta)
    assert np.linalg.norm(mapped - value) / np.linalg.norm(value) <= 1e-4
    # and the key really is the last prompt token's: it differs from the subject token's
    subject_targets = optimise_targets(
        model, [REQUEST], LAYER, TEMPLATES, dataclasses.replace(HP.targets, key_token="subject")
    )
    assert not np.allclose(subject_targets.key[0], targets.key[0])
    ids = jaxedit.core.tokens.encode_one(model.tokenizer, REQUEST.text)
    np.testing.assert_allclose(last_token_keys(model, LAYER, [REQUEST.text])[0], targets.key[0], atol=1e-4)
    assert len(ids) > 1


def test_reduces_to_rome_without_subject_constraint_at_the_subject_key(model, stats) -> None:
    targets = TargetHparams(steps=8, kl_prompt="{} is a")  # ROME's key and KL prompt
    hp = RetsHparams(layer=LAYER, targets=targets, subject_weight=0.0)
    ours = rets(model, REQUEST, stats, hp, constraint=np.eye(model.config.d_mlp), templates=["{}"])
    reference = rome(model, REQUEST, stats, RomeHparams(layer=LAYER, targets=targets), templates=["{}"])
    np.testing.assert_allclose(ours.dense(), reference.dense(), rtol=1e-4, atol=1e-6)
    assert ours.method == "rets-nosc"


def test_subject_constraint_holds_other_subjects_keys_in_place(model, stats, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("JAXEDIT_CACHE", str(tmp_path))
    constraint = subject_constraint(model, LAYER, OTHERS, progress=False)
    others = [Request(**r).text for r in OTHERS if r["subject"] != REQUEST.subject]
    keys = last_token_keys(model, LAYER, others)
    np.testing.assert_allclose(
        constraint.without(model, REQUEST.subject), keys.T @ keys, rtol=1e-4, atol=2e-4
    )
    base = np.asarray(model.params["layers"]["mlp"]["out"]["kernel"][LAYER], np.float64)
    moved = []
    for weight in (0.0, 100.0):
        delta = rets(
            model,
            REQUEST,
            stats,
            dataclasses.replace(HP, subject_weight=weight),
            constraint=constraint,
            templates=TEMPLATES,
        )
        moved.append(np.linalg.norm(keys @ (edited_kernel(model, delta) - base)))
    assert moved[1] < 0.2 * moved[0]  # the constrained update barely moves the other subjects' outputs
    # cached: a second call reads the matrix back
    again = subject_constraint(model, LAYER, OTHERS, progress=False)
    np.testing.assert_array_equal(again.matrix, constraint.matrix)


def test_kl_prompt_variants_and_key_positions() -> None:
    from hf_tiny import tiny_tokenizer

    class Stub:
        tokenizer = tiny_tokenizer()
        config = type("C", (), {"max_positions": 64})()

    paper = build_batch(Stub, [REQUEST], ["{}"], "{} is a", "last")
    reference = build_batch(Stub, [REQUEST], ["{}"], "{prompt} is a", "last")
    n_prompt = len(jaxedit.core.tokens.encode_one(Stub.tokenizer, REQUEST.text))
    assert paper.key_pos[0] == reference.key_pos[0] == n_prompt - 1  # the last relation token
    assert (
        paper.key_pos[1] == len(jaxedit.core.tokens.encode_one(Stub.tokenizer, "danielle darrieux is a")) - 1
    )
    assert reference.key_pos[1] == n_prompt + 2 - 1  # "<prompt> is a": read at its last token
    subject = build_batch(Stub, [REQUEST], ["{}"], "{} is a", "subject")
    assert subject.key_pos[0] == n_prompt - 2  # "... danielle darrieux is": the subject's last token


def test_bad_input_is_refused(model, stats) -> None:
    trailing = Request(prompt="the mother tongue of {}", subject="danielle darrieux", target="english")
    with pytest.raises(ValueError, match=r"last token .* is part of the subject"):
        rets(model, trailing, stats, HP, templates=TEMPLATES)
    with pytest.raises(ValueError, match="key_token must be"):
        build_batch(model, [REQUEST], ["{}"], "{} is a", "middle")


def test_last_token_taps_read_the_forward_pass_at_each_texts_last_token(model) -> None:
    texts = [REQUEST.text, "the capital of france is", "paris"]
    got = last_token_taps(model, LAYER, texts, "mlp_in")
    for row, text in zip(got, texts, strict=True):
        ids, mask = tok.encode(model.tokenizer, [text])
        taps = jaxedit.forward(model.params, model.config, ids, mask, taps=("mlp_in",)).taps["mlp_in"]
        np.testing.assert_allclose(row, np.asarray(taps[0, LAYER, -1]), atol=1e-5)
    with pytest.raises(ValueError, match="tap must be one of"):
        last_token_taps(model, LAYER, texts, "attn_heads")
    with pytest.raises(ValueError, match="outside the model"):
        last_token_taps(model, model.config.n_layers, texts, "mlp_key")
