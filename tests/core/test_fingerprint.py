"""The weight fingerprint tells edited, re-seeded and re-saved models apart, and journals rely on it
(issue 34, finding 3)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jaxedit
from jaxedit.core.fingerprint import weights_fingerprint
from jaxedit.edit import EditJournal, apply, revert
from jaxedit.edit.delta import Delta
from jaxedit.edit.stats import key_statistics


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return jaxedit.load_model(tiny_dirs["llama_gqa_untied"])


def _delta(model, scale: float = 1e-2) -> Delta:
    rng = np.random.default_rng(0)
    c = model.config
    return Delta(
        layers=(1,),
        left=rng.normal(size=(1, 1, c.d_mlp)) * scale,
        right=rng.normal(size=(1, 1, c.d_model)),
        method="t",
    )


def test_one_element_and_a_swap_change_the_fingerprint(model) -> None:
    base = model.fingerprint
    kernel = model.params["layers"]["mlp"]["out"]["kernel"]
    one_ulp = kernel.at[2, 5, 7].set(jnp.nextafter(kernel[2, 5, 7], jnp.inf))
    swapped = kernel.at[0, 0, 0].set(kernel[0, 0, 1]).at[0, 0, 1].set(kernel[0, 0, 0])
    for changed in (one_ulp, swapped):
        params = {
            **model.params,
            "layers": {
                **model.params["layers"],
                "mlp": {**model.params["layers"]["mlp"], "out": {"kernel": changed}},
            },
        }
        assert weights_fingerprint(model.config, params) != base
    assert weights_fingerprint(model.config, model.params) == base  # deterministic
    as_bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), model.params)
    assert weights_fingerprint(model.config, as_bf16) != base


def test_edits_seeds_and_saves_are_told_apart(model, tiny_dirs, tmp_path) -> None:
    edited = apply(model, _delta(model))
    assert edited.fingerprint != model.fingerprint and edited.base_fingerprint == model.fingerprint
    assert revert(edited, edited.edits[0]).fingerprint == model.fingerprint
    other_seed = jaxedit.load_model(tiny_dirs["llama_tied"])
    assert other_seed.fingerprint != model.fingerprint
    resaved = jaxedit.load_model(jaxedit.save_hf(model, tmp_path / "same"))
    assert resaved.fingerprint == model.fingerprint  # the same weights: caches stay valid
    exported = jaxedit.load_model(jaxedit.save_hf(edited, tmp_path / "edited"))
    assert exported.fingerprint == edited.fingerprint != model.fingerprint


def test_statistics_of_the_base_are_not_served_to_an_exported_edit(model, tmp_path) -> None:
    texts = ["the eiffel tower is in paris", "rome is a city"] * 4
    base = key_statistics(model, [2], texts, progress=False)[2]  # above the edited layer 1
    exported = jaxedit.load_model(jaxedit.save_hf(apply(model, _delta(model, 1.0)), tmp_path / "edited"))
    again = key_statistics(exported, [2], texts, progress=False)[2]
    assert again.meta["fingerprint"] == exported.fingerprint != base.meta["fingerprint"]
    assert not np.array_equal(again.matrix, base.matrix)


def test_a_journal_is_refused_on_the_model_it_produced(model, tmp_path) -> None:
    journal = EditJournal(model)
    journal.apply(_delta(model))
    saved = journal.save(tmp_path / "journal")
    meta = json.loads((saved / "journal.json").read_text())
    assert (
        meta["base_fingerprint"] == model.fingerprint
        and meta["edited_fingerprint"] == journal.model.fingerprint
    )
    produced = jaxedit.load_model(jaxedit.save_hf(journal.model, tmp_path / "exported"))
    with pytest.raises(ValueError, match="apply its 1 edits a second time"):
        EditJournal.load(saved, produced)
    with pytest.raises(ValueError, match="already carries 1 edits"):
        EditJournal.load(saved, journal.model)
    loaded = EditJournal.load(saved, model)
    assert loaded.model.fingerprint == journal.model.fingerprint  # exactly one application


@pytest.mark.parametrize("tamper", ["factors", "layer tensor", "layer record"])
def test_a_changed_journal_is_refused(model, tmp_path, tamper: str) -> None:
    journal = EditJournal(model)
    delta = _delta(model)
    journal.apply(delta)
    saved = journal.save(tmp_path / "journal")
    if tamper == "layer record":
        meta = json.loads((saved / "journal.json").read_text())
        meta["entries"][0]["layers"] = [2]
        (saved / "journal.json").write_text(json.dumps(meta))
        match = "records layers"
    else:
        tensors = load_file(str(saved / "deltas.safetensors"))
        if tamper == "factors":
            tensors[f"{delta.id}.left"] = tensors[f"{delta.id}.left"] * 2
        else:
            tensors[f"{delta.id}.layers"] = np.asarray([2], np.int64)
        save_file(tensors, str(saved / "deltas.safetensors"))
        match = "not the file journal.json recorded"
    with pytest.raises(ValueError, match=match):
        EditJournal.load(saved, model)
