"""iReVa adaptors (docs/methods.md §9): the gate, withdrawal, capacity growth, vmap, journal, bad input."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxedit
from jaxedit.core import tokens as tok
from jaxedit.edit import EditJournal, apply
from jaxedit.edit.adaptors import CapacityError, fired, list_facts, withdraw_fact
from jaxedit.edit.gate import adaptor_of
from jaxedit.edit.ireva import IrevaHparams, ireva
from jaxedit.evaluate.metrics import target_scores
from jaxedit.evaluate.withdrawal import withdrawal_metrics

FACTS = [
    {"prompt": "the mother tongue of {} is", "subject": "danielle darrieux", "target": "english"},
    {"prompt": "{} is located in the city of", "subject": "the eiffel tower", "target": "rome"},
    {"prompt": "the capital of {} is", "subject": "france", "target": "paris"},
]
OTHER = "the language of the eiffel tower is"
INIT = IrevaHparams(retrofit=False, alpha=50.0, normalise="l2", theta=0.75)


@pytest.fixture(scope="module")
def model(tiny_dirs):
    tiny = jaxedit.load_model(tiny_dirs["llama_gqa_untied"])
    return tiny.replace(params=jax.tree.map(lambda a: a * 3 if a.ndim >= 2 else a, tiny.params))


def last_logits(model, prompts: list[str]) -> np.ndarray:
    ids, mask = tok.encode(model.tokenizer, prompts)
    return np.asarray(jaxedit.forward(model.params, model.config, ids, mask).logits[:, -1])


def texts(facts) -> list[str]:
    return [f["prompt"].format(f["subject"]) for f in facts]


def test_edit_fires_its_neuron_and_below_theta_gives_exactly_the_base_logits(model) -> None:
    edited = apply(model, ireva(model, FACTS[:2], INIT, facts=["a", "b"], progress=False))
    firing = fired(edited, [*texts(FACTS[:2]), OTHER, texts(FACTS)[2]])
    assert [f.fact for f in firing[:2]] == ["a", "b"] and all(f.fired for f in firing[:2])
    assert firing[0].score == pytest.approx(1.0, abs=1e-5)  # the key is the prompt's own normalised input
    quiet = [f.prompt for f in firing[2:] if not f.fired]
    assert quiet, "expected an unrelated prompt below θ"
    np.testing.assert_array_equal(last_logits(edited, quiet), last_logits(model, quiet))
    # the edit changes the output where it fires: its answer token's logit rises
    answer = model.tokenizer(" english", add_special_tokens=False)["input_ids"][0]
    before, after = last_logits(model, texts(FACTS[:1]))[0], last_logits(edited, texts(FACTS[:1]))[0]
    assert after[answer] > before[answer] + 1.0


@pytest.mark.parametrize("mode", ["mute", "remove"])
def test_withdrawing_a_fact_restores_the_base_output_of_its_prompt(model, mode) -> None:
    journal = EditJournal(model)
    journal.apply(ireva(model, FACTS[:2], INIT, facts=["a", "b"], progress=False))
    prompt = texts(FACTS[:1])
    assert not np.array_equal(last_logits(journal.model, prompt), last_logits(model, prompt))
    journal.withdraw("a", mode)
    (after,) = fired(journal.model, prompt)
    assert not after.fired
    if mode == "mute":  # its neuron still wins its prompt, writing nothing
        assert after.fact == "a" and after.muted
    else:  # out of the gate; no other neuron fires for it
        assert after.fact != "a" and not after.muted
    np.testing.assert_array_equal(last_logits(journal.model, prompt), last_logits(model, prompt))
    assert [f["active"] for f in list_facts(journal.model)] == [False, True]
    assert [f["withdrawal"] for f in list_facts(journal.model)] == [mode, None]
    # the other fact is untouched: same logits as editing it alone
    alone = apply(model, ireva(model, FACTS[1:2], INIT, facts=["b"], progress=False))
    np.testing.assert_allclose(
        last_logits(journal.model, texts(FACTS[1:2])), last_logits(alone, texts(FACTS[1:2])), atol=1e-5
    )


def test_capacity_growth_preserves_every_edit(model) -> None:
    facts = [{**FACTS[i % 3], "target": f"w{i}"} for i in range(20)]  # answers w0..w19: one neuron each
    at_once = apply(model, ireva(model, facts, INIT, facts=[str(i) for i in range(20)], progress=False))
    grown = model
    for start in range(0, 20, 3):  # 7 edits: capacity 16, then doubled to 32
        part = facts[start : start + 3]
        ids = [str(i) for i in range(start, start + len(part))]
        grown = apply(grown, ireva(grown, part, INIT, facts=ids, progress=False))
    assert adaptor_of(grown.params).capacity == 32 and adaptor_of(at_once.params).capacity == 32
    grown_state, once_state = adaptor_of(grown.params), adaptor_of(at_once.params)
    for name in ("values", "active", "fact", "token"):
        np.testing.assert_array_equal(
            np.asarray(getattr(grown_state, name)), np.asarray(getattr(once_state, name))
        )
    # keys are inputs read in differently padded batches: equal up to float rounding
    np.testing.assert_allclose(np.asarray(grown_state.keys), np.asarray(once_state.keys), atol=1e-5)
    prompts = texts(facts)
    np.testing.assert_allclose(last_logits(grown, prompts), last_logits(at_once, prompts), atol=1e-4)
    assert [f.fact for f in fired(grown, prompts)] == [f.fact for f in fired(at_once, prompts)]


def test_gated_forward_under_vmap_equals_the_per_prompt_loop(model) -> None:
    edited = apply(model, ireva(model, FACTS, INIT, facts=["a", "b", "c"], progress=False))
    prompts = [*texts(FACTS), OTHER]
    rows = [tok.encode_one(model.tokenizer, p) for p in prompts]
    ids, mask = tok.pad(rows, tok.pad_id(model.tokenizer), side="left")

    def one(i: jax.Array, m: jax.Array) -> jax.Array:
        return jaxedit.forward(edited.params, edited.config, i[None], m[None]).logits[0, -1]

    batched = np.asarray(jax.vmap(one)(jnp.asarray(ids), jnp.asarray(mask)))
    looped = np.stack([last_logits(edited, [p])[0] for p in prompts])
    np.testing.assert_allclose(batched, looped, atol=1e-4)
    # right padding: the adaptor still acts at each row's last real token
    ids_r, mask_r = tok.pad(rows, tok.pad_id(model.tokenizer), side="right")
    logits = np.asarray(jaxedit.forward(edited.params, edited.config, ids_r, mask_r).logits)
    ends = mask_r.sum(1) - 1
    np.testing.assert_allclose(logits[np.arange(len(rows)), ends], looped, atol=1e-4)


def test_per_prefix_scoring_equals_teacher_forcing_when_no_neuron_fires(model) -> None:
    silent = dataclasses.replace(INIT, theta=1.5)  # cosine never exceeds 1
    edited = apply(model, ireva(model, FACTS, silent, facts=["a", "b", "c"], progress=False))
    pairs = [(t, "w3 w4 w5") for t in texts(FACTS)]
    base_nll, _, base_top = target_scores(model, pairs)
    nll, _, top = target_scores(edited, pairs)
    np.testing.assert_allclose(nll, base_nll, atol=1e-5)
    for a, b in zip(top, base_top, strict=True):
        np.testing.assert_array_equal(a, b)


def test_retrofit_lowers_the_edit_loss_and_keeps_keys_near_their_inputs(model) -> None:
    weak = dataclasses.replace(INIT, alpha=2.0)
    init = ireva(model, FACTS, weak, facts=["a", "b", "c"], progress=False)
    tuned = ireva(
        model,
        FACTS,
        dataclasses.replace(weak, retrofit=True, steps=10),
        facts=["a", "b", "c"],
        progress=False,
    )
    pairs = [(t, f["target"]) for t, f in zip(texts(FACTS), FACTS, strict=True)]
    nll_init, _, _ = target_scores(apply(model, init), pairs)
    nll_tuned, _, _ = target_scores(apply(model, tuned), pairs)
    assert nll_tuned.mean() < nll_init.mean() - 0.1
    assert tuned.info["edit_nll"] == pytest.approx(nll_tuned.mean(), abs=1e-3)
    cosines = np.sum(init.keys * tuned.keys, 1) / np.linalg.norm(tuned.keys, axis=1)
    assert np.all(cosines > 0.9)  # L_rec and the small step count keep each key near its input


def test_journal_round_trip_keeps_neurons_and_withdrawals(model, tmp_path) -> None:
    journal = EditJournal(model)
    journal.apply(
        ireva(
            model, FACTS, dataclasses.replace(INIT, normalise="center"), facts=["a", "b", "c"], progress=False
        )
    )
    journal.withdraw("b")
    journal.withdraw("c", mode="remove")
    journal.save(tmp_path / "j")
    loaded = EditJournal.load(tmp_path / "j", model)
    prompts = [*texts(FACTS), OTHER]
    np.testing.assert_array_equal(last_logits(loaded.model, prompts), last_logits(journal.model, prompts))
    assert [f["withdrawal"] for f in list_facts(loaded.model)] == [None, "mute", "remove"]
    for name in ("active", "muted"):
        np.testing.assert_array_equal(
            np.asarray(getattr(adaptor_of(loaded.model.params), name)),
            np.asarray(getattr(adaptor_of(journal.model.params), name)),
        )
    loaded.withdraw(loaded.model.edits[0].id)  # the whole batch
    np.testing.assert_array_equal(last_logits(loaded.model, prompts), last_logits(model, prompts))
    with pytest.raises(ValueError, match="Hugging Face checkpoint"):
        journal.export(tmp_path / "hf")


def test_bad_input_is_refused_clearly(model) -> None:
    with pytest.raises(ValueError, match=r"empty target|no tokens"):
        ireva(model, [{**FACTS[0], "target": " "}], INIT, progress=False)
    edited = apply(model, ireva(model, FACTS[:1], INIT, facts=["a"], progress=False))
    with pytest.raises(KeyError, match="no adaptor fact 'zzz'"):
        withdraw_fact(edited, "zzz")
    with pytest.raises(KeyError, match="edit or fact 'zzz' is not applied"):
        EditJournal(edited).withdraw("zzz")
    with pytest.raises(ValueError, match="unknown withdrawal mode 'delete'"):
        withdraw_fact(edited, "a", "delete")
    with pytest.raises(ValueError, match="already used: a"):
        ireva(edited, FACTS[1:2], INIT, facts=["a"], progress=False)
    with pytest.raises(CapacityError, match="exceeds the limit of 2"):
        ireva(edited, FACTS[1:3], dataclasses.replace(INIT, max_neurons=2), progress=False)
    with pytest.raises(ValueError, match="normalise must be one of"):
        ireva(model, FACTS[:1], dataclasses.replace(INIT, normalise="zscore"), progress=False)
    clash = ireva(model, FACTS[1:2], dataclasses.replace(INIT, theta=0.5), progress=False)
    with pytest.raises(ValueError, match="unlike the model's"):
        apply(edited, clash)


def test_withdrawal_metrics_match_withdrawing_each_fact_through_the_journal(model) -> None:
    edited = apply(model, ireva(model, FACTS, INIT, facts=["a", "b", "c"], progress=False))
    pairs = [(t, f["target"]) for t, f in zip(texts(FACTS), FACTS, strict=True)]
    metrics = withdrawal_metrics(edited, model, pairs, ["a", "b", "c"], progress=False)
    _, _, edited_top = target_scores(edited, pairs)
    _, _, base_top = target_scores(model, pairs)
    retrieved, consistent, retrieved_token, consistent_token = [], [], [], []
    for index, fact in enumerate("abc"):
        journal = EditJournal(edited)
        journal.withdraw(fact)
        _, _, (top,) = target_scores(journal.model, [pairs[index]])
        retrieved.append(not np.array_equal(top, edited_top[index]))
        consistent.append(np.array_equal(top, base_top[index]))
        retrieved_token.append(np.mean(top != edited_top[index]))
        consistent_token.append(np.mean(top == base_top[index]))
    assert metrics["RS"] == pytest.approx(100 * np.mean(retrieved), abs=0.01)
    assert metrics["Con"] == pytest.approx(100 * np.mean(consistent), abs=0.01)
    assert metrics["RS_token"] == pytest.approx(100 * np.mean(retrieved_token), abs=0.01)
    assert metrics["Con_token"] == pytest.approx(100 * np.mean(consistent_token), abs=0.01)
    assert metrics["RS_token"] <= metrics["RS"] == metrics["changed"]  # withdrawn = unedited here
    assert metrics["Con"] == 100.0  # one neuron per fact, none fires for another: the base answer returns


def test_exclusive_floors_keep_other_facts_neurons_quiet_after_a_withdrawal(model, tmp_path) -> None:
    capitals = (("france", "paris"), ("rome", "english"), ("danielle", "french"), ("paris", "rome"))
    facts = [{"prompt": "the capital of {} is", "subject": s, "target": t} for s, t in capitals]
    ids = ["a", "b", "c", "d"]
    pairs = [(t, f["target"]) for t, f in zip(texts(facts), facts, strict=True)]
    hp = dataclasses.replace(INIT, theta=0.3)
    shared = apply(model, ireva(model, facts, hp, facts=ids, progress=False))
    assert withdrawal_metrics(shared, model, pairs, ids, mode="remove", progress=False)["Con_token"] < 100
    edit = ireva(model, facts, dataclasses.replace(hp, exclusive=True), facts=ids, progress=False)
    # init only: keys are the pairs' normalised inputs, so a floor is the key's highest cosine to another
    # fact's key
    keys = edit.keys.astype(np.float64)
    cosine = keys @ keys.T / np.outer(np.linalg.norm(keys, axis=1), np.linalg.norm(keys, axis=1))
    other = edit.owner[:, None] != edit.owner[None, :]
    expected = np.where(other, cosine, -np.inf).max(0) + hp.exclusive_margin
    np.testing.assert_allclose(edit.floor, expected, atol=1e-5)
    journal = EditJournal(model)
    journal.apply(edit)
    journal.save(tmp_path / "j")
    exclusive = EditJournal.load(tmp_path / "j", model).model
    np.testing.assert_array_equal(np.asarray(adaptor_of(exclusive.params).floor[: len(keys)]), edit.floor)
    firing = fired(exclusive, texts(facts))
    assert [f.fact for f in firing] == ids and all(f.fired for f in firing)  # each edit still fires
    # removed (the paper's withdrawal): the floors keep the neighbours' neurons quiet
    metrics = withdrawal_metrics(exclusive, model, pairs, ids, mode="remove", progress=False)
    assert metrics["Con"] == metrics["Con_token"] == 100.0  # withdrawn: the base output, token for token
    assert metrics["RS"] == metrics["changed"]


def test_muting_a_withdrawn_fact_changes_only_the_inputs_its_neurons_won(model) -> None:
    """Facts with near inputs (one template): removing a fact's neurons lets a neighbour's neuron take its
    question over; muting them gives the base output back there and leaves every other input as it was."""
    capitals = (("france", "paris"), ("rome", "english"), ("danielle", "french"), ("paris", "rome"))
    facts = [{"prompt": "the capital of {} is", "subject": s, "target": t} for s, t in capitals]
    ids = ["a", "b", "c", "d"]
    pairs = [(t, f["target"]) for t, f in zip(texts(facts), facts, strict=True)]
    edited = apply(
        model, ireva(model, facts, dataclasses.replace(INIT, theta=0.3), facts=ids, progress=False)
    )
    removed = withdrawal_metrics(edited, model, pairs, ids, mode="remove", progress=False)
    assert removed["Con_token"] < 100  # a neighbour's neuron fires after the removal
    muted = withdrawal_metrics(edited, model, pairs, ids, progress=False)
    assert muted["Con"] == muted["Con_token"] == 100.0
    assert muted["RS"] == muted["changed"]
    prompts = [*texts(facts), OTHER, *texts(FACTS)]
    before = last_logits(edited, prompts)
    won = [f.fact == "a" and f.fired for f in fired(edited, prompts)]
    after = last_logits(withdraw_fact(edited, "a"), prompts)
    base = last_logits(model, prompts)
    for row, claimed in enumerate(won):  # the base output where "a" wrote, the edited output elsewhere
        np.testing.assert_array_equal(after[row], base[row] if claimed else before[row])
