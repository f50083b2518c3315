"""ROME on tiny models: the closed form, edits as values, statistics, target optimisation, bad input."""

from __future__ import annotations

import contextlib
import json
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import full_rank_texts
from records import TEMPLATES, TEXTS

import jaxedit
from jaxedit.edit import Delta, RomeHparams, apply, revert, rome
from jaxedit.edit.requests import Request
from jaxedit.edit.rome import rank_one_update
from jaxedit.edit.stats import StatsError, key_statistics
from jaxedit.edit.targets import TargetHparams, build_batch, chunk_order, optimise_targets
from jaxedit.runtime.execution import Execution

REQUEST = Request(prompt="the mother tongue of {} is", subject="danielle darrieux", target="english")


@pytest.fixture(scope="module")
def model(tiny_dirs):
    """The tiny Llama with matrices x3: its MLP outputs get norms of a few units, as in real models
    (at init they are ~0.02, and the norm-relative decay and clamp of docs/methods.md §4 then dominate)."""
    tiny = jaxedit.load_model(tiny_dirs["llama_gqa_untied"])
    return tiny.replace(params=jax.tree.map(lambda a: a * 3 if a.ndim >= 2 else a, tiny.params))


@pytest.fixture(scope="module")
def stats(model, tmp_path_factory):
    """Statistics over the fixed texts plus random word sequences, so that C has full rank (over the
    fixed texts alone it is singular and the solve follows rounding noise)."""
    stats = key_statistics(model, [1], full_rank_texts(model, TEXTS), cache=False, progress=False)[1]
    assert np.linalg.eigvalsh(np.asarray(stats.matrix, np.float64)).min() > 0
    return stats


def test_rank_one_update_maps_key_to_value_and_spares_orthogonal_directions() -> None:
    rng = np.random.default_rng(0)
    f, d = 24, 16
    a = rng.normal(size=(f, 400))
    c = a @ a.T / 400
    kernel = rng.normal(size=(f, d))  # [in, out]
    key_mean = rng.normal(size=f)
    key = key_mean + 0.1 * rng.normal(size=f)
    value = rng.normal(size=d)
    left, right = rank_one_update(c, key_mean, key, value - key @ kernel)
    edited = kernel + np.outer(left, right)
    assert np.linalg.norm(key @ edited - value) / np.linalg.norm(value) <= 1e-4
    u = np.linalg.solve(c, key_mean)
    for _ in range(5):
        x = rng.normal(size=f)
        x -= (x @ u) / (u @ u) * u  # x^T C^-1 k* = 0
        np.testing.assert_allclose(x @ edited, x @ kernel, atol=1e-4)


def test_singular_statistics_raise_a_clear_error() -> None:
    with pytest.raises(StatsError, match="singular"), pytest.warns(RuntimeWarning):
        rank_one_update(np.zeros((4, 4)), np.ones(4), np.ones(4), np.ones(3))


def test_rank_deficient_statistics_warn() -> None:
    keys = np.random.default_rng(0).normal(size=(3, 4))  # three keys span three of four directions
    c = keys.T @ keys / 3
    fails = contextlib.suppress(StatsError, FloatingPointError)  # or the solve fails outright
    with pytest.warns(RuntimeWarning, match="not positive definite"), fails:
        rank_one_update(c, keys.mean(0), keys[0], np.ones(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # full-rank statistics: no warning
        rank_one_update(c + np.eye(4), keys.mean(0), keys[0], np.ones(2))


def random_delta(model, layer: int, seed: int) -> Delta:
    rng = np.random.default_rng(seed)
    c = model.config
    return Delta(
        layers=(layer,), left=rng.normal(size=(1, 1, c.d_mlp)), right=rng.normal(size=(1, 1, c.d_model)),
        method="test",
    )  # fmt: skip


def test_revert_of_apply_is_bit_for_bit(model) -> None:
    delta = random_delta(model, 1, 0)
    edited = apply(model, delta)
    with pytest.raises(AssertionError):
        chex.assert_trees_all_equal(edited.params, model.params)
    back = revert(edited, delta)
    chex.assert_trees_all_equal(back.params, model.params)
    assert back.edits == () and back.base is None


def test_withdrawing_edit_two_of_three_equals_applying_one_and_three(model) -> None:
    d1, d2, d3 = (random_delta(model, layer, seed) for seed, layer in ((1, 0), (2, 1), (3, 1)))
    all_three = apply(apply(apply(model, d1), d2), d3)
    withdrawn = revert(all_three, d2.id)
    only = apply(apply(model, d1), d3)
    assert [d.id for d in withdrawn.edits] == [d1.id, d3.id]
    chex.assert_trees_all_close(withdrawn.params, only.params, rtol=1e-6, atol=1e-6)


def test_delta_errors(model) -> None:
    delta = random_delta(model, 1, 0)
    with pytest.raises(KeyError, match="not applied"):
        revert(model, delta)
    with pytest.raises(ValueError, match="already applied"):
        apply(apply(model, delta), delta)
    with pytest.raises(ValueError, match="does not fit"):
        apply(
            model,
            Delta(
                layers=(9,), left=np.ones((1, 1, model.config.d_mlp)), right=np.ones((1, 1, 64)), method="x"
            ),
        )
    with pytest.raises(ValueError, match="non-finite"):
        Delta(layers=(0,), left=np.full((1, 1, 4), np.nan), right=np.ones((1, 1, 4)), method="x")


def test_statistics_equal_the_mean_outer_product_of_keys(model) -> None:
    stats = key_statistics(model, [1], TEXTS, cache=False, progress=False)[1]
    ids, mask = jaxedit.core.tokens.encode(model.tokenizer, TEXTS[:5], side="right")
    keys = np.asarray(
        jaxedit.forward(model.params, model.config, ids, mask, taps=("mlp_key",)).taps["mlp_key"]
    )
    rows = keys[:, 1][np.asarray(mask, bool)]  # [tokens, F]
    expected = rows.T @ rows / len(rows)
    np.testing.assert_allclose(stats.matrix, expected, rtol=1e-4, atol=1e-6)
    assert stats.tokens == 8 * len(rows)  # TEXTS repeats the five texts eight times


def test_statistics_cache_round_trip_and_checks(model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("JAXEDIT_CACHE", str(tmp_path))
    first = key_statistics(model, [0, 1], TEXTS, progress=False)
    files = sorted(p.name for p in (tmp_path / "stats").iterdir())
    assert len(files) == 4 and sum(name.endswith(".npz") for name in files) == 2
    metas = [json.loads((tmp_path / "stats" / f).read_text()) for f in files if f.endswith(".json")]
    assert sorted(m["layer"] for m in metas) == [0, 1] and all(m["samples"] == len(TEXTS) for m in metas)
    again = key_statistics(model, [1], TEXTS, progress=False)
    np.testing.assert_array_equal(again[1].matrix, first[1].matrix)
    assert again[1].meta["corpus"] == "texts" and again[1].meta["layer"] == 1
    first[1].check(model, 1)
    with pytest.raises(StatsError, match="not 0"):
        first[1].check(model, 0)
    other = model.replace(params=jax.tree.map(lambda a: a * 1.5, model.params))
    with pytest.raises(StatsError, match="other weights"):
        first[1].check(other, 1)


def test_batched_target_optimisation_equals_separate_runs(model) -> None:
    other = Request(prompt="the eiffel tower is located in the city of {}", subject="paris", target="rome")
    hp = TargetHparams(steps=6)
    both = optimise_targets(model, [REQUEST, other], 1, TEMPLATES, hp)
    chunked = optimise_targets(
        model, [REQUEST, other], 1, TEMPLATES, hp, execution=Execution(max_rows=4)
    )  # one request per loop
    np.testing.assert_allclose(chunked.delta, both.delta, rtol=1e-3, atol=1e-4)
    for i, request in enumerate([REQUEST, other]):
        alone = optimise_targets(model, [request], 1, TEMPLATES, hp)
        np.testing.assert_allclose(both.delta[i], alone.delta[0], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(both.m0[i], alone.m0[0], rtol=1e-5, atol=1e-6)
    assert (both.loss[:, 0] > both.loss[:, 5]).all()  # the loss goes down


def test_chunks_of_similar_length_return_targets_in_request_order(model) -> None:
    long_target = Request(prompt="{} is located in", subject="paris", target="the city of rome . paris")
    short = Request(prompt="the eiffel tower is located in the city of {}", subject="paris", target="rome")
    requests = [long_target, REQUEST, short]
    batch = build_batch(model, requests, TEMPLATES, TargetHparams().kl_prompt)
    order = chunk_order(batch, len(requests))
    assert order.tolist() == [2, 1, 0]  # fewest tokens from the key token to the last target token first
    hp = TargetHparams(steps=4)
    rows = 2 * (len(TEMPLATES) + 1)  # two requests per loop: chunks {short, REQUEST} and {long}
    chunked = optimise_targets(model, requests, 1, TEMPLATES, hp, execution=Execution(max_rows=rows))
    for i, request in enumerate(requests):
        alone = optimise_targets(model, [request], 1, TEMPLATES, hp)
        np.testing.assert_allclose(chunked.delta[i], alone.delta[0], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(chunked.m0[i], alone.m0[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(chunked.steps[i], alone.steps[0])


def test_rome_writes_v_star_and_raises_the_target(model, stats) -> None:
    hp = RomeHparams(layer=1)
    delta = rome(model, REQUEST, stats, hp, templates=TEMPLATES)
    edited = apply(model, delta)
    ids = np.asarray([jaxedit.core.tokens.encode_one(model.tokenizer, REQUEST.text)])
    target = model.tokenizer.convert_tokens_to_ids("english")
    before = jax.nn.softmax(jaxedit.forward(model.params, model.config, ids).logits[0, -1])
    after = jax.nn.softmax(jaxedit.forward(edited.params, edited.config, ids).logits[0, -1])
    assert float(after[target]) > 2 * float(before[target])  # the flip itself: tests/app/test_smollm2.py
    # the rank-one edit writes v* exactly at the bare prompt's key (the last subject token)
    pos = jaxedit.core.tokens.token_span(model.tokenizer, REQUEST.text, REQUEST.subject)[1] - 1
    key = jaxedit.forward(model.params, model.config, ids, taps=("mlp_key", "mlp_out")).taps
    k = np.asarray(key["mlp_key"][0, 1, pos])
    taps_after = jaxedit.forward(edited.params, edited.config, ids, taps=("mlp_out",)).taps
    out_after = taps_after["mlp_out"][0, 1, pos]
    v_star = np.asarray(key["mlp_out"][0, 1, pos]) + delta.right[0, 0]
    np.testing.assert_allclose(np.asarray(out_after), v_star, rtol=1e-4, atol=1e-4)
    assert delta.info["layer"] == 1 and k.shape == (model.config.d_mlp,)


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        ({"prompt": "the city of paris is", "subject": "rome", "target": "rome"}, "does not occur"),
        ({"prompt": "the city of {} is", "subject": "paris", "target": " "}, "empty target"),
        ({"prompt": "the city of {} is {}", "subject": "paris", "target": "rome"}, "one '\\{\\}'"),
        ({"prompt": "{} is in {city}", "subject": "paris", "target": "rome"}, "no other brace"),
        ({"prompt": "the city of {} is", "subject": "   ", "target": "rome"}, "empty subject"),
    ],
)
def test_bad_requests_raise_and_change_nothing(model, stats, request_, match) -> None:
    before = jax.tree.map(np.asarray, model.params)
    with pytest.raises(ValueError, match=match):
        rome(model, request_, stats, RomeHparams(layer=1), templates=TEMPLATES)
    chex.assert_trees_all_equal(before, model.params)


def test_statistics_for_another_layer_are_refused(model, stats) -> None:
    with pytest.raises(StatsError, match=r"for layer 1 .mlp_key., not 0"):
        rome(model, REQUEST, stats, RomeHparams(layer=0), templates=TEMPLATES)


def test_journal_save_load_round_trip_and_withdraw(model, tmp_path) -> None:
    from jaxedit.edit import EditJournal

    journal = EditJournal(model)
    deltas = [random_delta(model, layer, seed) for seed, layer in ((4, 0), (5, 1), (6, 2))]
    for d in deltas:
        journal.apply(d)
    path = journal.save(tmp_path / "journal")
    loaded = EditJournal.load(path, model)
    assert [e["id"] for e in loaded.entries()] == [d.id for d in deltas]
    chex.assert_trees_all_equal(loaded.model.params, journal.model.params)
    loaded.withdraw(deltas[1].id)
    assert [e["id"] for e in loaded.entries()] == [deltas[0].id, deltas[2].id]
    assert "<table>" in loaded._html_table()  # its notebook table (treescope's rendering when installed)
    with pytest.raises(KeyError, match="not applied"):
        loaded.withdraw("nope")
    other = model.replace(params=jax.tree.map(lambda a: a + 1.0, model.params))
    with pytest.raises(ValueError, match="another model"):
        EditJournal.load(path, other)
    journal.save(path)  # overwriting an existing journal is atomic and leaves no staging folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal"]


def test_fine_tuning_baselines_lower_the_nll_and_ft_l_respects_its_bound(model) -> None:
    from jaxedit.edit.finetune import FinetuneHparams, finetune

    ft = finetune(model, REQUEST, FinetuneHparams(layer=1, lr=1e-2, steps=10))
    ft_l = finetune(model, REQUEST, FinetuneHparams(layer=1, lr=1e-2, steps=10, limit=5e-4))
    dense_l = ft_l.dense()[0]
    assert np.abs(dense_l).max() <= 5e-4 + 1e-9
    assert np.abs(ft.dense()[0]).max() > 5e-4
    ids = np.asarray([jaxedit.core.tokens.encode_one(model.tokenizer, REQUEST.text)])
    target = model.tokenizer.convert_tokens_to_ids("english")

    def p_target(m) -> float:
        return float(jax.nn.softmax(jaxedit.forward(m.params, m.config, ids).logits[0, -1])[target])

    assert p_target(apply(model, ft)) > p_target(model)
    assert ft.method == "ft" and ft_l.method == "ft-l" and ft.info["steps"] <= 10
    back = revert(apply(model, ft), ft)
    chex.assert_trees_all_equal(back.params, model.params)


def test_target_nll_equals_a_plain_forward_with_the_delta_added(model) -> None:
    """The optimisation recomputes only the tokens from the key on (cached prefix keys / values);
    its NLL must equal full forwards of every context with δ added at the key token."""
    from jaxedit.core import interventions as iv
    from jaxedit.edit.targets import build_batch

    layer = 1
    targets = optimise_targets(model, [REQUEST], layer, TEMPLATES, TargetHparams(steps=4, loss_stop=0.0))
    batch = build_batch(model, [REQUEST], TEMPLATES, "{} is a")
    c = model.config
    nll = []
    for r in np.flatnonzero(~batch.is_kl):
        n = int(batch.mask[r].sum())
        ids = batch.ids[r : r + 1, :n]
        add = np.zeros((1, c.n_layers, n, c.d_model), np.float32)
        add[0, layer, batch.key_pos[r]] = targets.delta[0]
        logits = jaxedit.forward(model.params, c, ids, interventions={"mlp_out": iv.add(add)}).logits[0]
        logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
        reads = batch.read_pos[r][batch.weights[r] > 0]
        labels = batch.labels[r][batch.weights[r] > 0]
        nll.append(-np.mean(logp[reads, labels]))
    np.testing.assert_allclose(targets.nll[0], np.mean(nll), rtol=1e-4, atol=1e-5)
    assert np.linalg.norm(targets.delta[0]) > 0


def test_attention_projection_deltas_and_statistics(model) -> None:
    c = model.config
    width = c.n_heads * c.head_dim
    rng = np.random.default_rng(9)
    delta = Delta(
        layers=(2,), left=rng.normal(size=(1, 1, width)), right=rng.normal(size=(1, 1, c.d_model)),
        method="test", site="attn",
    )  # fmt: skip
    edited = apply(model, delta)
    before = model.params["layers"]["attn"]["o"]["kernel"]
    after = edited.params["layers"]["attn"]["o"]["kernel"]
    np.testing.assert_allclose(np.asarray(after[2] - before[2]), delta.dense()[0], rtol=1e-5, atol=1e-6)
    assert bool(jnp.array_equal(after[:2], before[:2]))
    assert bool(
        jnp.array_equal(
            edited.params["layers"]["mlp"]["out"]["kernel"], model.params["layers"]["mlp"]["out"]["kernel"]
        )
    )
    chex.assert_trees_all_equal(revert(edited, delta).params, model.params)
    with pytest.raises(ValueError, match="site"):
        Delta(layers=(0,), left=np.ones((1, 1, 4)), right=np.ones((1, 1, 4)), method="x", site="embed")

    stats = key_statistics(model, [1], TEXTS[:5], cache=False, progress=False, site="attn_heads")[1]
    ids, mask = jaxedit.core.tokens.encode(model.tokenizer, TEXTS[:5], side="right")
    heads = np.asarray(jaxedit.forward(model.params, c, ids, mask, taps=("attn_heads",)).taps["attn_heads"])
    rows = heads[:, 1][np.asarray(mask, bool)]
    np.testing.assert_allclose(stats.matrix, rows.T @ rows / len(rows), rtol=1e-4, atol=1e-6)
    stats.check(model, 1, site="attn_heads")
    with pytest.raises(StatsError, match=r"attn_heads., not 1 .mlp_key"):
        stats.check(model, 1)


def test_rome_sequence_equals_edits_applied_one_after_another(model, stats) -> None:
    from jaxedit.edit import rome_sequence

    second = Request(prompt="{} is the capital of", subject="rome", target="france")
    hp = RomeHparams(layer=1, targets=TargetHparams(steps=5))
    merged = rome_sequence(model, [REQUEST, second], stats, hp, templates=TEMPLATES, progress=False)
    first = rome(model, REQUEST, stats, hp, templates=TEMPLATES)
    once = apply(model, first)
    then = apply(once, rome(once, second, stats, hp, templates=TEMPLATES))  # computed on the edited model
    assert merged.method == "rome-seq" and merged.left.shape[:2] == (1, 2)
    sequenced = apply(model, merged)
    chex.assert_trees_all_close(sequenced.params, then.params, rtol=1e-5, atol=1e-6)
    alone = apply(model, rome(model, second, stats, hp, templates=TEMPLATES))  # not what a sequence does
    kernel = ("layers", "mlp", "out", "kernel")
    get = lambda m: np.asarray(m.params[kernel[0]][kernel[1]][kernel[2]][kernel[3]])  # noqa: E731
    assert not np.allclose(get(sequenced) - get(once), get(alone) - get(model), atol=1e-6)


def test_float16_rome_edits_like_float32_and_the_check_sees_damage(tiny_dirs, model, stats) -> None:
    """A float16 model is edited with float32 arithmetic (`jaxedit.edit.precision`): the same delta
    as the float32 model's up to the weights' rounding, the target raised, the post-edit check clean;
    a delta that wrecks the model is reported by the check."""
    from jaxedit.edit.health import check_edit

    half = model.replace(params=jax.tree.map(lambda a: a.astype(jnp.float16), model.params))
    half = half.replace(config=half.config.replace(dtype="float16"))
    half_stats = key_statistics(half, [1], full_rank_texts(half, TEXTS), cache=False, progress=False)[1]
    hp = RomeHparams(layer=1)
    delta16 = rome(half, REQUEST, half_stats, hp, templates=TEMPLATES)
    delta32 = rome(model, REQUEST, stats, hp, templates=TEMPLATES)
    np.testing.assert_allclose(
        delta16.dense(), delta32.dense(), rtol=0.05, atol=0.05 * np.abs(delta32.dense()).max()
    )
    edited = apply(half, delta16)
    assert edited.params["layers"]["mlp"]["out"]["kernel"].dtype == jnp.float16
    health = check_edit(half, edited, [REQUEST])
    assert health.ok and health.finite and health.target_gain[0] > 0
    wreck = Delta(
        layers=(0, 1, 2),
        left=np.full((3, 1, model.config.d_mlp), 1e3),
        right=np.full((3, 1, model.config.d_model), 1e3),
        method="x",
    )
    damaged = check_edit(half, apply(half, wreck), [REQUEST], warn=False)
    assert not damaged.ok and not damaged.finite
