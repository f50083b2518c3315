"""Cached generation: equal to re-running the full forward, batched equal to unbatched, sampling bounded."""

from __future__ import annotations

import numpy as np
import pytest
from hf_tiny import VOCAB

import jaxedit
from jaxedit import generate


@pytest.mark.parametrize("name", ["gpt2", "gptj", "llama_gqa_untied", "neox_sequential"])
def test_greedy_with_cache_equals_full_forward_loop(name, tiny_dirs) -> None:
    model = jaxedit.load_model(tiny_dirs[name])
    prompt = np.random.default_rng(0).integers(0, VOCAB, size=(1, 6))
    got = generate(model.params, model.config, prompt, max_new_tokens=7)
    seq = prompt
    for _ in range(7):
        logits = jaxedit.forward(model.params, model.config, seq).logits
        seq = np.concatenate([seq, np.asarray(logits[:, -1:].argmax(-1))], axis=1)
    np.testing.assert_array_equal(got, seq[:, 6:])


def test_batched_left_padded_equals_unbatched(tiny_dirs) -> None:
    model = jaxedit.load_model(tiny_dirs["llama_tied"])
    rng = np.random.default_rng(1)
    rows = [rng.integers(0, VOCAB, size=n).tolist() for n in (3, 9, 6)]
    ids, mask = jaxedit.core.tokens.pad(rows, 0, side="left")
    batched = generate(model.params, model.config, ids, mask, max_new_tokens=5)
    for i, row in enumerate(rows):
        alone = generate(model.params, model.config, np.asarray([row]), max_new_tokens=5)
        np.testing.assert_array_equal(batched[i], alone[0])


def test_top_k_sampling_is_seeded_and_stays_in_top_k(tiny_dirs) -> None:
    model = jaxedit.load_model(tiny_dirs["gpt2"])
    prompt = np.random.default_rng(2).integers(0, VOCAB, size=(4, 5))
    a = generate(model.params, model.config, prompt, max_new_tokens=1, top_k=3, seed=7)
    b = generate(model.params, model.config, prompt, max_new_tokens=1, top_k=3, seed=7)
    np.testing.assert_array_equal(a, b)
    top3 = np.argsort(
        -np.asarray(jaxedit.forward(model.params, model.config, prompt).logits[:, -1]), axis=-1
    )[:, :3]
    assert all(a[i, 0] in top3[i] for i in range(4))
    many = generate(
        model.params, model.config, np.repeat(prompt[:1], 64, 0), max_new_tokens=1, top_k=3, seed=1
    )
    assert len(set(many[:, 0].tolist())) > 1


def test_eos_repeats_after_stop(tiny_dirs) -> None:
    model = jaxedit.load_model(tiny_dirs["gpt2"])
    prompt = np.random.default_rng(3).integers(0, VOCAB, size=(1, 4))
    free = generate(model.params, model.config, prompt, max_new_tokens=6)
    eos = int(free[0, 1])
    stopped = generate(model.params, model.config, prompt, max_new_tokens=6, eos_id=eos)
    assert stopped[0, 1] == eos and (stopped[0, 1:] == eos).all()


def test_generation_past_the_context_is_refused(tiny_dirs) -> None:
    model = jaxedit.load_model(tiny_dirs["gpt2"])
    with pytest.raises(ValueError, match="context"):
        generate(model.params, model.config, np.zeros((1, 60), int), max_new_tokens=10)


def test_groups_sample_as_if_generated_alone(tiny_dirs) -> None:
    """`groups`: one sampled call on consecutive groups of rows returns what one call per group returns,
    for groups of different sizes and prompt lengths (left padding included)."""
    model = jaxedit.load_model(tiny_dirs["gpt2"])
    rng = np.random.default_rng(5)
    groups = [rng.integers(0, VOCAB, size=(n, length)) for n, length in ((2, 4), (1, 6), (3, 3), (2, 5))]
    alone = [generate(model.params, model.config, g, max_new_tokens=6, top_k=4, seed=11) for g in groups]
    width = max(g.shape[1] for g in groups)
    ids = np.concatenate([np.pad(g, ((0, 0), (width - g.shape[1], 0))) for g in groups])
    mask = np.concatenate([np.pad(np.ones_like(g), ((0, 0), (width - g.shape[1], 0))) for g in groups])
    sizes = [len(g) for g in groups]
    together = generate(
        model.params, model.config, ids, mask, max_new_tokens=6, top_k=4, seed=11, groups=sizes
    )
    np.testing.assert_array_equal(together, np.concatenate(alone))
    plain = generate(model.params, model.config, ids, mask, max_new_tokens=6, top_k=4, seed=11)
    assert (plain != together).any()  # without groups the batch draws other numbers
    with pytest.raises(ValueError, match="groups"):
        generate(model.params, model.config, ids, mask, max_new_tokens=2, top_k=4, groups=[2, 2])


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa_untied"])
def test_row_deltas_generate_each_row_as_its_edited_model(name, tiny_dirs) -> None:
    """Rows of one call, each with its own low-rank MLP output edit (two models, different layers and
    ranks), continue greedily as each edited model does alone; a model of unmatched rows is refused."""
    from jaxedit.edit import Delta, apply
    from jaxedit.edit.delta import row_deltas
    from jaxedit.errors import InputError

    model = jaxedit.load_model(tiny_dirs[name])
    c = model.config
    rng = np.random.default_rng(3)

    def delta(layers: tuple[int, ...], rank: int) -> Delta:
        shape = (len(layers), rank)
        return Delta(
            layers=layers, left=rng.normal(size=(*shape, c.d_mlp)), right=rng.normal(size=(*shape, c.d_model)),
            method="test",
        )  # fmt: skip

    deltas = [delta((1,), 1), delta((0, 2), 3)]
    prompt = rng.integers(0, VOCAB, size=(3, 5))
    models = [1, 0, 1]
    together = generate(
        model.params, model.config, prompt, max_new_tokens=6, row_deltas=row_deltas(deltas, models)
    )
    alone = [
        generate(apply(model, deltas[g]).params, c, prompt[i : i + 1], max_new_tokens=6)[0]
        for i, g in enumerate(models)
    ]
    np.testing.assert_array_equal(together, np.stack(alone))
    unedited = generate(model.params, c, prompt, max_new_tokens=6)
    assert (together != unedited).any()  # the edits change what is generated
    with pytest.raises(InputError, match="rows"):
        generate(model.params, c, prompt, max_new_tokens=2, row_deltas=row_deltas(deltas, [0, 1]))
    with pytest.raises(InputError, match=r"models 0\.\.1"):
        row_deltas(deltas, [0, 2, 1])
