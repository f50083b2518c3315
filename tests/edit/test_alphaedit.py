"""AlphaEdit (Fang et al., 2025): the null-space projector, the projected solve, preserved keys' outputs
unchanged on a real (tiny) model, and the earlier edits' keys kept in place."""

from __future__ import annotations

import numpy as np
import pytest
from test_memit import REQUESTS, TEMPLATES

import jaxedit
from jaxedit.edit import key_statistics
from jaxedit.edit.alphaedit import (
    AlphaEditHparams,
    alphaedit,
    alphaedit_layers,
    alphaedit_update,
    layer_projector,
    null_space_projector,
)
from jaxedit.edit.targets import TargetHparams


def low_rank_problem(seed: int = 0, f: int = 24, rank: int = 14, d: int = 10, n: int = 4):
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(f, rank))
    c = basis @ basis.T / rank  # [F, F] of rank `rank`: a null space of dimension f - rank
    return c, rng.normal(size=(n, f)), rng.normal(size=(n, d)), basis


def test_projector_spans_the_null_space_of_the_statistics() -> None:
    c, _, _, basis = low_rank_problem()
    projector = null_space_projector(c, 1e-2)
    p = projector.matrix
    assert projector.rank == 24 - 14
    np.testing.assert_allclose(p @ p, p, atol=1e-10)  # a projector
    np.testing.assert_allclose(p, p.T, atol=1e-12)
    np.testing.assert_allclose(p @ basis, 0, atol=1e-10)  # kills every preserved direction
    np.testing.assert_allclose(c @ p, 0, atol=1e-10)


def test_projected_update_leaves_preserved_keys_unchanged_and_solves_its_system() -> None:
    c, k, r, basis = low_rank_problem(1)
    p = null_space_projector(c, 1e-2).matrix
    left = alphaedit_update(p, k, l2=0.5)
    update = left.T @ r  # [F, D]
    preserved = np.random.default_rng(2).normal(size=(30, 14)) @ basis.T  # keys in the range of C
    assert np.abs(preserved @ update).max() <= 1e-9 * np.abs(update).max() * 30
    # (P KᵀK + l2 I) X = P Kᵀ R
    np.testing.assert_allclose((p @ k.T @ k + 0.5 * np.eye(24)) @ update, p @ k.T @ r, atol=1e-9)
    # the new keys do move: the edit is not the zero update
    assert np.linalg.norm(k @ update) > 0.1 * np.linalg.norm(r)


def test_earlier_keys_are_kept_in_place() -> None:
    c, k, r, _ = low_rank_problem(3)
    p = null_space_projector(c, 1e-2).matrix
    earlier_k = np.random.default_rng(4).normal(size=(3, 24)) @ p  # earlier edits' keys (in P's range)
    free = alphaedit_update(p, k, 0.1).T @ r
    kept = alphaedit_update(p, k, 0.1, earlier=1e4 * earlier_k.T @ earlier_k).T @ r
    assert np.linalg.norm(earlier_k @ kept) < 0.05 * np.linalg.norm(earlier_k @ free)


@pytest.fixture(scope="module")
def preserved(model):
    """Statistics over a few random texts (F = 128 keys, ~50 tokens: a large null space), and those
    texts' keys at both layers on the unedited model."""
    words = sorted(w for w in model.tokenizer.get_vocab() if w != "<unk>")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 12)) for _ in range(4)]
    stats = key_statistics(model, [0, 1], texts, cache=False, progress=False)
    keys = {}
    for layer in (0, 1):
        rows = []
        for text in texts:
            ids = np.asarray([jaxedit.core.tokens.encode_one(model.tokenizer, text)])
            taps = jaxedit.forward(model.params, model.config, ids, taps=("mlp_key",)).taps["mlp_key"]
            rows.append(np.asarray(taps[0, layer], np.float64))
        keys[layer] = np.concatenate(rows)
    return stats, keys


HP = AlphaEditHparams(
    layers=(0, 1), threshold=1e-3, l2=0.1, targets=TargetHparams(steps=8, reference="resid_post")
)


@pytest.fixture(scope="module")
def solved(model, preserved):
    return alphaedit_layers(model, REQUESTS[:2], preserved[0], HP, templates=TEMPLATES, progress=False)


def test_alphaedit_on_a_model_leaves_preserved_outputs_and_moves_the_edited_ones(
    model, preserved, solved
) -> None:
    _, keys = preserved
    delta = solved.delta
    assert delta.method == "alphaedit" and delta.left.shape[:2] == (2, 2)
    assert all(0 < rank < model.config.d_mlp for rank in map(int, delta.info["null_space"].values()))
    dense = delta.dense()  # [layers, F, D]
    for i, layer in enumerate(delta.layers):
        kernel = np.asarray(model.params["layers"]["mlp"]["out"]["kernel"][layer], np.float64)
        before = keys[layer] @ kernel  # the preserved texts' MLP outputs, W K0
        change = keys[layer] @ dense[i]  # (W' - W) K0
        assert np.linalg.norm(change) <= 1e-3 * np.linalg.norm(before)
        # the edited keys (the solve's own K) do move
        assert np.linalg.norm(solved.keys[layer] @ dense[i]) > 10 * np.linalg.norm(change)
    # and the edit moves the edited prompt towards its target
    edited = jaxedit.edit.apply(model, delta)
    pairs = [(r.text, r.target) for r in REQUESTS[:2]]
    from jaxedit.evaluate.metrics import target_scores

    before, _, _ = target_scores(model, pairs)
    after, _, _ = target_scores(edited, pairs)
    assert np.all(after < before)


def test_projector_is_cached_with_the_statistics(model, preserved, monkeypatch) -> None:
    stats, _ = preserved
    first = layer_projector(stats[1], 1e-3)
    calls = []
    monkeypatch.setattr(
        "jaxedit.edit.alphaedit.null_space_projector", lambda *a: calls.append(a) or pytest.fail("recomputed")
    )
    again = layer_projector(stats[1], 1e-3)
    np.testing.assert_array_equal(first.matrix, again.matrix)
    assert again.rank == first.rank and not calls


def test_alphaedit_hparams_refuse_bad_values_and_packaged_files_build() -> None:
    from importlib import resources

    from jaxedit.edit.hparams import build, read_hparams

    with pytest.raises(ValueError, match="threshold"):
        AlphaEditHparams(threshold=0.0)
    with pytest.raises(ValueError, match="l2"):
        AlphaEditHparams(l2=-1.0)
    files = [
        p
        for p in resources.files("jaxedit.hparams").joinpath("alphaedit").iterdir()
        if p.name.endswith(".json")
    ]
    assert files
    for file in files:
        hp = build(AlphaEditHparams, read_hparams(file))
        assert hp.layers == tuple(sorted(hp.layers)) and hp.threshold > 0


def test_alphaedit_equals_memit_machinery_with_the_projected_solve(model, preserved, solved) -> None:
    """Same walk as MEMIT: the delta's left factors are `alphaedit_update` of the keys it reports, and
    `alphaedit` returns the same delta."""
    stats, _ = preserved
    for i, layer in enumerate(solved.delta.layers):
        p = layer_projector(stats[layer], HP.threshold).matrix
        expected = alphaedit_update(p, solved.keys[layer], HP.l2)
        np.testing.assert_allclose(solved.delta.left[i], expected, rtol=1e-4, atol=1e-7)
    again = alphaedit(model, REQUESTS[:2], stats, HP, templates=TEMPLATES, progress=False)
    np.testing.assert_allclose(again.left, solved.delta.left, rtol=1e-5, atol=1e-8)
