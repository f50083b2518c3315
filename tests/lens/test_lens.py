"""Vocabulary-lens analyses (docs/methods.md §2) on a tiny model: ranks, attribute rate, blocking, probes."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxedit
from jaxedit.core import interventions as iv
from jaxedit.core import tokens as tok
from jaxedit.lens import (
    LensFact,
    attribute_rate,
    attribute_tokens,
    component_probes,
    lens_readout,
    sublayer_blocking,
)
from jaxedit.lens.relation import _rates

PROMPTS = [
    "the mother tongue of danielle darrieux is",
    "the eiffel tower is located in the city of",
    "rome is the capital of",
]


@pytest.fixture(scope="module")
def model(tiny_dirs):
    tiny = jaxedit.load_model(tiny_dirs["llama_gqa_untied"])
    return tiny.replace(params=jax.tree.map(lambda a: a * 3 if a.ndim >= 2 else a, tiny.params))


def last_logits(model, prompts, interventions=None):
    ids, mask = tok.encode(model.tokenizer, prompts, side="right")
    out = jaxedit.forward(model.params, model.config, ids, mask, interventions=interventions)
    return np.asarray(out.logits[np.arange(len(prompts)), mask.sum(1) - 1])


def test_the_argmax_of_each_layer_has_rank_one_and_the_last_layer_is_the_output(model) -> None:
    first = lens_readout(model, PROMPTS, k=5)
    top1 = first.top["resid_post"][:, :, 0]  # [n, L]
    readout = lens_readout(model, PROMPTS, watch=top1, k=5)
    layers = model.config.n_layers
    np.testing.assert_array_equal(readout.ranks[:, np.arange(layers), np.arange(layers)], 1)
    logits = last_logits(model, PROMPTS)
    np.testing.assert_array_equal(readout.top["resid_post"][:, -1], np.argsort(-logits, axis=-1)[:, :5])
    np.testing.assert_array_equal(readout.final, logits.argmax(-1))


def test_attribute_rate_on_a_constructed_top_k(model) -> None:
    tokenizer = model.tokenizer
    words = ["paris", "rome", "france", "english", "tower", "city", "capital", "language"]
    ids = [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in words]
    top = np.asarray([[ids, ids[::-1]]])  # one fact, two layers, k = 8
    attributes = attribute_tokens(tokenizer, ["paris", "english language", "w40 w41"])
    assert {"w40", "w41", "language"} <= {a.strip() for a in attributes}  # every sub-token of an attribute
    rates = _rates(model, top, [LensFact("x", "P1")], {"P1": attributes})
    np.testing.assert_allclose(rates, [[3 / 8, 3 / 8]])  # paris, english, language
    with pytest.raises(ValueError, match="no attributes for relation ids P9"):
        attribute_rate(model, [LensFact(PROMPTS[0], "P9")], {"P1": ["paris"]})


def test_blocking_zeroes_the_sublayer_update_at_the_last_token(model) -> None:
    blocked = lens_readout(model, PROMPTS, k=5, blocked_layers=[1, 2], blocked_site="mlp_out")
    ids, mask = tok.encode(model.tokenizer, PROMPTS, side="right")
    where = np.zeros((len(PROMPTS), model.config.n_layers, ids.shape[1]), bool)
    where[np.arange(len(PROMPTS)), 1, mask.sum(1) - 1] = True
    where[np.arange(len(PROMPTS)), 2, mask.sum(1) - 1] = True
    zero = iv.replace(where, np.zeros((*where.shape, model.config.d_model), np.float32))
    logits = last_logits(model, PROMPTS, {"mlp_out": zero})
    np.testing.assert_array_equal(blocked.final, logits.argmax(-1))
    np.testing.assert_array_equal(blocked.top["resid_post"][:, -1], np.argsort(-logits, axis=-1)[:, :5])
    facts = [LensFact(p, "P1") for p in PROMPTS]
    result = sublayer_blocking(model, facts, {"P1": ["paris", "rome"]}, window=2, k=5, progress=False)
    assert len(result["drop"]["mlp"]) == len(result["drop"]["attn"]) == model.config.n_layers


def test_component_probes_match_a_direct_computation(model) -> None:
    probes = component_probes(model, PROMPTS, k=5)
    ids, mask = tok.encode(model.tokenizer, PROMPTS, side="right")
    out = jaxedit.forward(model.params, model.config, ids, mask, taps=("resid_pre", "attn_out", "resid_post"))
    rows, last = np.arange(len(PROMPTS)), mask.sum(1) - 1
    pre = np.asarray(out.taps["resid_pre"])[rows, :, last]
    mid = pre + np.asarray(out.taps["attn_out"])[rows, :, last]
    post = np.asarray(out.taps["resid_post"])[rows, :, last]

    def cosine(a, b):
        return (np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).mean(0)

    np.testing.assert_allclose(probes["attn_cosine"], cosine(pre, mid), atol=1e-5)
    np.testing.assert_allclose(probes["mlp_cosine"], cosine(mid, post), atol=1e-5)
    assert all(0.0 <= j <= 1.0 for j in probes["mlp_jaccard"])
