"""MEMIT: the per-layer solve, spread factors, the one-layer closed form, batch withdrawal."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from records import TEMPLATES, TEXTS

import jaxedit
from jaxedit.edit import TargetHparams, apply, key_statistics, revert
from jaxedit.edit.memit import MemitHparams, memit, solve_update, spread_factor
from jaxedit.edit.requests import Request
from jaxedit.edit.targets import build_batch, optimise_targets

REQUESTS = [
    Request(prompt="the mother tongue of {} is", subject="danielle darrieux", target="english"),
    Request(prompt="the eiffel tower is located in the city of {}", subject="paris", target="rome"),
    Request(prompt="{} is the capital of", subject="rome", target="france"),
]


@pytest.fixture(scope="module")
def stats(model):
    """Statistics over the fixed texts plus random word sequences, so that C has full rank."""
    words = sorted(w for w in model.tokenizer.get_vocab() if w != "<unk>")
    rng = np.random.default_rng(0)
    texts = TEXTS + [" ".join(rng.choice(words, 12)) for _ in range(60)]
    return key_statistics(model, [0, 1], texts, cache=False, progress=False)


def random_problem(seed: int = 0, f: int = 20, d: int = 12, n: int = 5):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(f, 300))
    return a @ a.T / 300, rng.normal(size=(n, f)), rng.normal(size=(n, d))


def test_solve_satisfies_its_normal_equations() -> None:
    c, k, r = random_problem()
    weight = 3.0
    left = solve_update(c, k, r, weight)
    update = left.T @ r  # [F, D] kernel increment
    lhs = (weight * c + k.T @ k) @ update
    rhs = k.T @ r
    assert np.linalg.norm(lhs - rhs) / np.linalg.norm(rhs) <= 1e-5


def test_solve_equals_regularised_least_squares_in_float64() -> None:
    """min_X ||K X - R||² + λ tr(Xᵀ C X), solved as a stacked least-squares problem with numpy."""
    c, k, r = random_problem(1)
    weight = 0.7
    chol = np.linalg.cholesky(c)
    stacked = np.concatenate([k, np.sqrt(weight) * chol.T])  # [n + F, F]
    target = np.concatenate([r, np.zeros((c.shape[0], r.shape[1]))])
    expected, *_ = np.linalg.lstsq(stacked, target, rcond=None)
    np.testing.assert_allclose(solve_update(c, k, r, weight).T @ r, expected, rtol=1e-8, atol=1e-10)


def test_spread_factors_are_exact() -> None:
    assert [spread_factor(layer, 8, "even") for layer in range(3, 9)] == [
        1 / 6,
        1 / 5,
        1 / 4,
        1 / 3,
        1 / 2,
        1.0,
    ]
    assert [spread_factor(layer, 8, "sqrt") for layer in range(3, 9)] == [
        1 / np.sqrt(k) for k in (6, 5, 4, 3, 2, 1)
    ]
    with pytest.raises(ValueError, match="spread"):
        spread_factor(3, 8, "linear")


def test_batch_edit_moves_outputs_to_targets_and_withdraws_exactly(model, stats) -> None:
    hp = MemitHparams(
        layers=(0, 1), mom2_weight=0.5, targets=TargetHparams(steps=6, clamp=0.75, reference="resid_post")
    )
    delta = memit(model, REQUESTS, stats, hp, templates=TEMPLATES, progress=False)
    assert delta.left.shape == (2, 3, model.config.d_mlp) and delta.layers == (0, 1)
    edited = apply(model, delta)
    targets = optimise_targets(model, REQUESTS, 1, TEMPLATES, hp.targets)
    batch = build_batch(model, REQUESTS, TEMPLATES, hp.targets.kl_prompt)
    for i, r in enumerate(np.flatnonzero(batch.is_bare)):
        n = int(batch.mask[r].sum())
        ids = batch.ids[r : r + 1, :n]

        def h(m, ids=ids, r=r):
            return np.asarray(
                jaxedit.forward(m.params, m.config, ids, taps=("resid_post",)).taps["resid_post"][
                    0, 1, batch.key_pos[r]
                ]
            )

        assert np.linalg.norm(h(edited) - targets.value[i]) < 0.5 * np.linalg.norm(
            h(model) - targets.value[i]
        )
    back = revert(edited, delta)
    chex.assert_trees_all_equal(back.params, model.params)


def test_missing_statistics_are_refused(model, stats) -> None:
    from jaxedit.edit import StatsError

    with pytest.raises(StatsError, match="no statistics for critical layer 2"):
        memit(model, REQUESTS[:1], stats, MemitHparams(layers=(1, 2)), templates=TEMPLATES, progress=False)


def test_packaged_hyperparameter_files_build_and_unknown_fields_are_refused(tmp_path) -> None:
    from importlib import resources

    from jaxedit.edit.hparams import build, read_hparams
    from jaxedit.edit.memit import MemitHparams
    from jaxedit.edit.rome import RomeHparams

    root = resources.files("jaxedit.hparams")
    for method, cls in (("rome", RomeHparams), ("memit", MemitHparams), ("pmet", MemitHparams)):
        files = sorted(p for p in root.joinpath(method).iterdir() if p.name.endswith(".json"))
        assert files, method
        for file in files:
            hp = build(cls, read_hparams(file))
            assert isinstance(hp.targets, TargetHparams)
            if method != "rome":
                assert hp.layers == tuple(sorted(hp.layers)) and hp.spread == (
                    "sqrt" if method == "pmet" else "even"
                )
    bad = tmp_path / "bad.json"
    bad.write_text('{"layer": 3, "stepz": 10}')
    with pytest.raises(ValueError, match="unknown RomeHparams fields"):
        build(RomeHparams, read_hparams(bad))


def test_default_hyperparameters_per_model(model) -> None:
    from jaxedit.edit.memit import default_hparams
    from jaxedit.edit.rome import default_layer

    assert default_layer(model) == 1  # no file for a 3-layer llama: GPT-2 XL's relative depth
    assert default_hparams(model, "pmet").spread == "sqrt" and default_hparams(model).layers == (0, 1)


def test_conflicting_targets_in_one_batch_are_refused(model, stats) -> None:
    clash = [REQUESTS[0], dataclasses.replace(REQUESTS[0], target="french"), REQUESTS[1]]
    with pytest.raises(ValueError, match="1 prompts are asked for conflicting targets"):
        memit(model, clash, stats, MemitHparams(layers=(0, 1)), templates=TEMPLATES, progress=False)
    with pytest.raises(ValueError, match="no edit requests"):
        memit(model, [], stats, MemitHparams(layers=(0, 1)), templates=TEMPLATES, progress=False)
    with pytest.raises(ValueError, match="critical layers must lie in"):
        memit(model, REQUESTS[:1], stats, MemitHparams(layers=(1, 3)), templates=TEMPLATES, progress=False)


def test_pmet_attention_ablation_solves_the_attention_projection_and_withdraws(
    model, stats, tmp_path
) -> None:
    from jaxedit.edit import EditJournal
    from jaxedit.edit.memit import pmet_hparams
    from jaxedit.edit.stats import StatsError

    words = sorted(w for w in model.tokenizer.get_vocab() if w != "<unk>")
    rng = np.random.default_rng(1)
    texts = TEXTS + [" ".join(rng.choice(words, 12)) for _ in range(60)]
    attn_stats = key_statistics(model, [1], texts, site="attn_heads", cache=False, progress=False)
    hp = pmet_hparams(layers=(1,), mom2_weight=2.0, update_attn=True)
    hp = dataclasses.replace(hp, targets=dataclasses.replace(hp.targets, steps=6))
    with pytest.raises(StatsError, match="attn_stats"):
        memit(model, REQUESTS[:1], stats, hp, templates=TEMPLATES, progress=False)
    with pytest.raises(StatsError, match="statistics are for"):  # MLP statistics given for attention
        memit(model, REQUESTS[:1], stats, hp, templates=TEMPLATES, attn_stats=stats, progress=False)
    delta = memit(model, REQUESTS[:1], stats, hp, templates=TEMPLATES, attn_stats=attn_stats, progress=False)
    (attn,) = delta.attached
    assert attn.site == "attn" and attn.left.shape == (1, 1, model.config.n_heads * model.config.head_dim)
    # closed form at the last critical layer: the attention input keys, residual δa
    targets = optimise_targets(model, REQUESTS[:1], 1, TEMPLATES, hp.targets)
    batch = build_batch(model, REQUESTS[:1], TEMPLATES, hp.targets.kl_prompt)
    keys = []
    for r in np.flatnonzero(~batch.is_kl):
        n = int(batch.mask[r].sum())
        taps = jaxedit.forward(
            model.params, model.config, batch.ids[r : r + 1, :n], taps=("attn_heads",)
        ).taps
        keys.append(np.asarray(taps["attn_heads"][0, 1, batch.key_pos[r]], np.float64))
    k = np.mean(keys, axis=0)[None]
    c = attn_stats[1].matrix.astype(np.float64)
    expected = np.linalg.solve(2.0 * c + k.T @ k, k.T @ targets.delta_attn[None, 0].astype(np.float64))
    np.testing.assert_allclose(attn.dense()[0], expected, rtol=2e-3, atol=1e-6)

    journal = EditJournal(model)
    edited = journal.apply(delta)
    o_before = model.params["layers"]["attn"]["o"]["kernel"]
    assert not bool(jnp.array_equal(edited.params["layers"]["attn"]["o"]["kernel"], o_before))
    loaded = EditJournal.load(journal.save(tmp_path / "journal"), model)
    assert loaded.entries()[0]["attached"][0]["site"] == "attn"
    chex.assert_trees_all_equal(loaded.model.params, edited.params)
    back = journal.withdraw(delta.id)
    chex.assert_trees_all_equal(back.params, model.params)


def test_pmet_phi_schedule_lowers_the_nll_weight_once_the_targets_are_argmax(model) -> None:
    """With the KL stop always met, a request stops at the first evaluation after φ fell to 0.1: the
    losses equal the unscheduled run's up to that evaluation, which is lower by 0.9·NLL."""
    base = TargetHparams(steps=30, lr=0.5, clamp=4.0, loss_stop=-1.0, kl_stop=1e9)
    plain = optimise_targets(model, REQUESTS, 1, TEMPLATES, base)
    phased = optimise_targets(model, REQUESTS, 1, TEMPLATES, dataclasses.replace(base, nll_schedule=True))
    assert (plain.steps == 30).all()
    switched = 0
    for i in range(len(REQUESTS)):
        same = np.isclose(phased.loss[i], plain.loss[i], rtol=1e-5, atol=1e-6)
        if same.all():  # this request's targets never became the argmax: φ stayed 1, no early stop
            assert phased.steps[i] == 30
            continue
        switch = int(np.argmin(same))  # first evaluation that differs
        assert switch >= 1 and same[:switch].all()
        assert phased.steps[i] == switch + 1  # stopped at the first evaluation with φ = 0.1
        assert phased.loss[i, switch] < plain.loss[i, switch]
        assert np.isnan(phased.loss[i, switch + 1 :]).all()
        switched += 1
    assert switched >= 2


def test_target_store_resumes_and_feeds_the_same_solve(model, stats, tmp_path, monkeypatch) -> None:
    """The target store keeps targets in groups; what it reads back gives the same MEMIT delta as
    targets optimised in place, nothing is optimised twice, and another model or setting never
    reads them."""
    from jaxedit.edit import target_store

    hp = MemitHparams(
        layers=(0, 1), mom2_weight=0.5, targets=TargetHparams(steps=6, clamp=0.75, reference="resid_post")
    )
    first = target_store.stored_targets(model, REQUESTS[:2], hp, TEMPLATES, tmp_path, group=2)
    more = [*REQUESTS, REQUESTS[0]]  # one new request, one repeated
    stored = target_store.stored_targets(model, more, hp, TEMPLATES, tmp_path, group=2)
    (folder,) = tmp_path.iterdir()
    assert len(list(folder.glob("*.npz"))) == 2  # the first two, then the third
    edits, seconds = target_store.stored_time(model, hp, TEMPLATES, tmp_path)
    assert edits == 3 and seconds > 0
    np.testing.assert_array_equal(stored.delta[:2], first.delta)
    np.testing.assert_array_equal(stored.delta[3], first.delta[0])

    def refuse(*args, **kwargs):
        raise AssertionError("targets were optimised again")

    monkeypatch.setattr(target_store, "memit_targets", refuse)
    again = target_store.stored_targets(model, REQUESTS, hp, TEMPLATES, tmp_path)
    fresh = optimise_targets(model, REQUESTS, 1, TEMPLATES, hp.targets)
    np.testing.assert_allclose(again.value, fresh.value, rtol=1e-4, atol=1e-5)
    solved = memit(model, REQUESTS, stats, hp, templates=TEMPLATES, targets=again, progress=False)
    direct = memit(model, REQUESTS, stats, hp, templates=TEMPLATES, targets=fresh, progress=False)
    np.testing.assert_allclose(solved.dense(), direct.dense(), rtol=1e-4, atol=1e-6)
    other = model.replace(params=jax.tree.map(lambda a: a * 1.01, model.params))
    for changed in (other, model):  # another model, then other settings: their own folders, recomputed
        variant = hp if changed is other else dataclasses.replace(hp, targets=TargetHparams(steps=5))
        with pytest.raises(AssertionError, match="optimised again"):
            target_store.stored_targets(changed, REQUESTS[:1], variant, TEMPLATES, tmp_path)
    assert len(list(tmp_path.iterdir())) == 3


def test_layer_walk_reads_equal_forward_passes_of_the_edited_model(model) -> None:
    """Keys and values read on states walked up through edited layers equal a fresh forward pass."""
    from jaxedit.edit.walk import LayerWalk

    batch = build_batch(model, REQUESTS, TEMPLATES, "{} is a")
    rows = np.flatnonzero(~batch.is_kl)
    walk = LayerWalk(model.config, model.params, batch, rows, 0, batch_rows=4)  # chunks of 4 rows
    rng = np.random.default_rng(0)

    def perturbed(params, layer):  # an edit of `layer`'s MLP output weights
        out = params["layers"]["mlp"]["out"]
        bump = jnp.asarray(rng.normal(size=out["kernel"].shape[1:]) * 0.05, out["kernel"].dtype)
        mlp = {**params["layers"]["mlp"], "out": {**out, "kernel": out["kernel"].at[layer].add(bump)}}
        return {**params, "layers": {**params["layers"], "mlp": mlp}}

    params = perturbed(model.params, 0)
    walk.advance(params, 1)
    params = perturbed(params, 1)  # edits at the walk's own layer and above are read through
    keys, values = walk.read(params, 1, "mlp_key", "resid_post")
    subset = np.arange(1, len(rows), 3)
    sub_keys, sub_values = walk.read(params, 1, "mlp_key", "resid_post", subset)
    expected_keys, expected_values = [], []
    for r in rows:
        n = int(batch.mask[r].sum())
        taps = jaxedit.forward(
            params, model.config, batch.ids[r : r + 1, :n], taps=("mlp_key", "resid_post")
        ).taps
        expected_keys.append(np.asarray(taps["mlp_key"][0, 1, batch.key_pos[r]]))
        expected_values.append(np.asarray(taps["resid_post"][0, 1, batch.key_pos[r]]))
    np.testing.assert_allclose(keys, expected_keys, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(values, expected_values, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sub_keys, keys[subset], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sub_values, values[subset], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="cannot go down"):
        walk.advance(params, 0)
