"""Every editing method on every family's tiny model: GPT-2 (Conv1D weights, MLP biases), GPT-J and NeoX
(parallel attention + MLP), NeoX sequential, Llama (GQA, untied). Each method's own invariant is checked
where the family's weight layout could break it, and the edited weights exported to Hugging Face give
the same logits in `transformers`.

- ROME (Meng et al., 2022, §3.1): the rank-one update writes `v*` at the bare prompt's key.
- MEMIT (Meng et al., 2023, §4.3) on one layer: the update solves `(λC + K Kᵀ) Δ = K R`.
- PMET (Li et al., 2024, §3.2): the same solve with only the MLP target `δm` as the residual.
- RETS (Gupta et al., 2024): the mean relation key is mapped to `v*` (`k̄ W' + b = m0 + δ`).
- iReVa (Wang et al., 2024, §3): the neuron fires on its own prompt, and below θ the logits are the base
  model's exactly.
- FT-L (Zhu et al., 2020): the target's probability rises and every weight moves at most by the bound.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from conftest import full_rank_texts

import jaxedit
from jaxedit.core import tokens as tok
from jaxedit.edit import EditJournal, RomeHparams, TargetHparams, apply, key_statistics, memit, rome
from jaxedit.edit.adaptors import fired
from jaxedit.edit.finetune import FinetuneHparams, finetune
from jaxedit.edit.ireva import IrevaHparams, ireva
from jaxedit.edit.memit import MemitHparams, pmet_hparams
from jaxedit.edit.requests import Request
from jaxedit.edit.rets import RetsHparams, rets
from jaxedit.edit.targets import build_batch, optimise_targets

FAMILIES = ["gpt2", "gptj", "neox_parallel", "neox_sequential", "llama_gqa_untied"]
REQUEST = Request(prompt="the mother tongue of {} is", subject="danielle darrieux", target="english")
TEMPLATES = ["{}", "the city of rome . {}"]
TEXTS = [
    "the eiffel tower is located in the city of paris in france",
    "danielle darrieux was french and the mother tongue of danielle darrieux is french",
    "rome is the capital city of a w40 w41 w42 on the w50",
] * 4
LAYER = 1
STEPS = TargetHparams(steps=5, clamp=4.0)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tiny_dirs):
    """(model, statistics at LAYER) per family; matrices x3 so that MLP outputs have norms of a few
    units, as in real models."""
    tiny = jaxedit.load_model(tiny_dirs[request.param])
    model = tiny.replace(params=jax.tree.map(lambda a: a * 3 if a.ndim >= 2 else a, tiny.params))
    stats = key_statistics(model, [LAYER], full_rank_texts(model, TEXTS, 40), cache=False, progress=False)
    return model, stats[LAYER]


def bare_ids(model) -> np.ndarray:
    return np.asarray([tok.encode_one(model.tokenizer, REQUEST.text)])


def key_position(model) -> int:
    return tok.token_span(model.tokenizer, REQUEST.text, REQUEST.subject)[1] - 1


def taps_at_key(model, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    taps = jaxedit.forward(model.params, model.config, bare_ids(model), taps=names).taps
    return {n: np.asarray(taps[n][0, LAYER, key_position(model)], np.float64) for n in names}


def mean_context_key(model, hp: TargetHparams) -> np.ndarray:
    """The key averaged over the contexts, by one plain forward pass of the right-padded rows."""
    batch = build_batch(model, [REQUEST], TEMPLATES, hp.kl_prompt)
    taps = jaxedit.forward(model.params, model.config, batch.ids, batch.mask, taps=("mlp_key",)).taps
    rows = np.flatnonzero(~batch.is_kl)
    keys = np.asarray(taps["mlp_key"][rows, LAYER, batch.key_pos[rows]], np.float64)
    return keys.mean(axis=0)[None]


def kernel(model) -> np.ndarray:
    return np.asarray(model.params["layers"]["mlp"]["out"]["kernel"][LAYER], np.float64)


def test_rome_writes_v_star_at_the_key(family) -> None:
    model, stats = family
    delta = rome(model, REQUEST, stats, RomeHparams(layer=LAYER, targets=STEPS), templates=TEMPLATES)
    before = taps_at_key(model, ("mlp_out",))["mlp_out"]
    after = taps_at_key(apply(model, delta), ("mlp_out",))["mlp_out"]
    np.testing.assert_allclose(after, before + delta.right[0, 0], rtol=1e-4, atol=1e-4)
    assert np.linalg.norm(delta.right) > 1e-3


@pytest.mark.parametrize("method", ["memit", "pmet"])
def test_memit_and_pmet_solve_their_normal_equations(family, method) -> None:
    model, stats = family
    if method == "memit":
        hp = MemitHparams(
            layers=(LAYER,), mom2_weight=2.0, targets=dataclasses.replace(STEPS, reference="resid_post")
        )
    else:
        hp = pmet_hparams(layers=(LAYER,), mom2_weight=2.0)
        hp = dataclasses.replace(hp, targets=dataclasses.replace(hp.targets, steps=5))
    delta = memit(model, [REQUEST], {LAYER: stats}, hp, templates=TEMPLATES, progress=False)
    targets = optimise_targets(model, [REQUEST], LAYER, TEMPLATES, hp.targets)
    if method == "memit":  # the residual stream at the key moves to the target
        residual = targets.value[0] - taps_at_key(model, ("resid_post",))["resid_post"]
    else:  # PMET optimises δa too, but writes only δm
        assert np.linalg.norm(targets.delta_attn[0]) > 0
        residual = targets.delta[0].astype(np.float64)
    k = mean_context_key(model, hp.targets)
    c = np.asarray(stats.matrix, np.float64)
    # the normal equations' residual, not the entries: a tiny model's statistics have near-dead MLP units
    # (eigenvalues ~1e-8), along which the solution itself is ill-determined
    lhs = (2.0 * c + k.T @ k) @ np.asarray(delta.dense()[0], np.float64)
    rhs = k.T @ residual[None]
    assert np.linalg.norm(lhs - rhs) / np.linalg.norm(rhs) <= 1e-4


def test_rets_maps_the_mean_relation_key_to_v_star(family) -> None:
    model, stats = family
    hp = RetsHparams(
        layer=LAYER, targets=dataclasses.replace(STEPS, key_token="last", kl_prompt="{prompt} is a")
    )
    delta = rets(model, REQUEST, stats, hp, constraint=np.eye(model.config.d_mlp), templates=TEMPLATES)
    targets = optimise_targets(model, [REQUEST], LAYER, TEMPLATES, hp.targets)
    bias = model.params["layers"]["mlp"]["out"].get("bias")
    bias = 0.0 if bias is None else np.asarray(bias[LAYER], np.float64)
    mapped = targets.key_mean[0].astype(np.float64) @ kernel(apply(model, delta)) + bias
    value = targets.m0[0] + targets.delta[0]
    assert np.linalg.norm(mapped - value) / np.linalg.norm(value) <= 1e-4


def test_ireva_fires_on_its_prompt_and_leaves_other_prompts_exact(family) -> None:
    model, _ = family
    hp = IrevaHparams(layer=LAYER, retrofit=False, alpha=150.0, normalise="l2", theta=0.9)
    edited = apply(model, ireva(model, [REQUEST], hp, facts=["a"], progress=False))
    others = ["the capital of france is", "rome is the capital city of", "english", "a w40 w41 on the w50"]
    firing = fired(edited, [REQUEST.text, *others])
    assert firing[0].fired and firing[0].fact == "a"
    assert firing[0].score == pytest.approx(1.0, abs=1e-5)
    quiet = [f.prompt for f in firing[1:] if not f.fired]
    assert quiet, "expected an unrelated prompt below θ"
    ids, mask = tok.encode(model.tokenizer, quiet)
    base = jaxedit.forward(model.params, model.config, ids, mask).logits
    np.testing.assert_array_equal(
        np.asarray(jaxedit.forward(edited.params, edited.config, ids, mask).logits), np.asarray(base)
    )
    answer = model.tokenizer.convert_tokens_to_ids("english")
    logits_before = jaxedit.forward(model.params, model.config, bare_ids(model)).logits[0, -1]
    logits_after = jaxedit.forward(edited.params, edited.config, bare_ids(model)).logits[0, -1]
    assert float(logits_after[answer]) > float(logits_before[answer]) + 0.5


def test_ft_l_raises_the_target_within_its_bound(family) -> None:
    model, _ = family
    delta = finetune(model, REQUEST, FinetuneHparams(layer=LAYER, lr=1e-2, steps=8, limit=5e-3))
    assert np.abs(delta.dense()[0]).max() <= 5e-3 + 1e-9
    answer = model.tokenizer.convert_tokens_to_ids("english")

    def p_answer(m) -> float:
        return float(
            jax.nn.softmax(jaxedit.forward(m.params, m.config, bare_ids(model)).logits[0, -1])[answer]
        )

    assert p_answer(apply(model, delta)) > p_answer(model)


def test_exported_edits_give_the_same_logits_in_transformers(family, tmp_path) -> None:
    """ROME, MEMIT and FT-L deltas in one journal, exported in the family's Hugging Face layout."""
    torch = pytest.importorskip("torch")
    import transformers

    model, stats = family
    journal = EditJournal(model)
    journal.apply(rome(model, REQUEST, stats, RomeHparams(layer=LAYER, targets=STEPS), templates=TEMPLATES))
    other = Request(prompt="{} is located in the city of", subject="the eiffel tower", target="rome")
    hp = MemitHparams(
        layers=(LAYER,), mom2_weight=2.0, targets=dataclasses.replace(STEPS, reference="resid_post")
    )
    journal.apply(memit(journal.model, [other], {LAYER: stats}, hp, templates=TEMPLATES, progress=False))
    journal.apply(
        finetune(journal.model, REQUEST, FinetuneHparams(layer=LAYER, lr=1e-2, steps=4, limit=5e-3))
    )
    path = journal.export(tmp_path / "edited")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    ids = bare_ids(model)
    with torch.no_grad():
        expected = hf(torch.tensor(ids)).logits.numpy()
    got = np.asarray(jaxedit.forward(journal.model.params, model.config, ids).logits)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    base = np.asarray(jaxedit.forward(model.params, model.config, ids).logits)
    assert np.abs(base - got).max() > 1e-3  # the edits are in the exported weights
