"""The method registry: an editor built by `make_editor` gives the edit of the method called by hand with
the same settings, statistics and templates; settings and bad methods are handled in one place."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import full_rank_texts

from jaxedit.edit import RomeHparams, memit, rome
from jaxedit.edit.contexts import context_templates
from jaxedit.edit.finetune import FT_L
from jaxedit.edit.ireva import IrevaHparams
from jaxedit.edit.memit import MemitHparams
from jaxedit.edit.registry import Statistics, make_editor, method_hparams
from jaxedit.edit.requests import Request
from jaxedit.edit.stats import key_statistics
from jaxedit.edit.targets import TargetHparams
from jaxedit.errors import InputError

REQUESTS = [
    Request(prompt="the mother tongue of {} is", subject="danielle darrieux", target="english"),
    Request(prompt="{} is located in the city of", subject="the eiffel tower", target="rome"),
]
TEXTS = ["the eiffel tower is located in the city of paris in france"] * 4
FEW_STEPS = TargetHparams(steps=4)


@pytest.fixture(scope="module")
def corpus(model, tmp_path_factory) -> Statistics:
    path = tmp_path_factory.mktemp("corpus") / "texts.jsonl"
    texts = full_rank_texts(model, TEXTS)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return Statistics(corpus=str(path), samples=len(texts), max_len=32)


def factors(delta) -> list[np.ndarray]:
    return [np.asarray(delta.left), np.asarray(delta.right), np.asarray(delta.layers)]


def test_rome_editor_equals_rome_called_by_hand(model, corpus) -> None:
    hp = RomeHparams(layer=1, targets=FEW_STEPS)
    editor = make_editor("rome", model, hp, corpus)
    stats = key_statistics(model, [1], corpus=corpus.corpus, samples=corpus.samples, max_len=32)[1]
    by_hand = rome(model, REQUESTS[0], stats, hp, templates=context_templates(model, hp.prefixes))
    assert not editor.batched and editor.settings["statistics"] == corpus.record()
    for got, want in zip(factors(editor(model, REQUESTS[0])), factors(by_hand), strict=True):
        np.testing.assert_array_equal(got, want)


def test_memit_editor_equals_memit_called_by_hand(model, corpus) -> None:
    hp = MemitHparams(layers=(0, 1), targets=dataclasses.replace(MemitHparams().targets, steps=4))
    editor = make_editor("memit", model, hp, corpus)
    stats = key_statistics(model, [0, 1], corpus=corpus.corpus, samples=corpus.samples, max_len=32)
    by_hand = memit(model, REQUESTS, stats, hp, templates=context_templates(model, hp.prefixes))
    assert editor.batched and tuple(editor.settings["hparams"]["layers"]) == (0, 1)
    for got, want in zip(factors(editor(model, REQUESTS)), factors(by_hand), strict=True):
        np.testing.assert_array_equal(got, want)


def test_settings_take_the_layer_and_layers_given() -> None:
    assert method_hparams("ft-l", None, FT_L, layer=3).layer == 3
    assert method_hparams("rome", None, RomeHparams(layer=2)).layer == 2
    assert method_hparams("rome", None, RomeHparams(layer=2), layer=0).layer == 0
    assert method_hparams("pmet", None, MemitHparams(layers=(1, 2)), layers=[0]).layers == (0,)
    assert method_hparams("ireva-init", None, IrevaHparams(layer=1)).retrofit is False
    assert method_hparams("ireva", None, IrevaHparams(layer=1), layer=2) == IrevaHparams(
        layer=2, retrofit=True
    )


def test_an_unknown_method_is_refused_in_one_line(model) -> None:
    with pytest.raises(InputError, match="unknown editing method 'grace'; choose from rome"):
        make_editor("grace", model)
