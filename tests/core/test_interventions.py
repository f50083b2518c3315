"""Interventions: self-replacement is a no-op, deltas respect causality and depth, vmap equals a loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_tiny import VOCAB

import jaxedit
import jaxedit.core.decoder
from jaxedit.core import interventions as iv

SITES = iv.LAYER_SITES
assert "attn_heads" in SITES


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return jaxedit.load_model(tiny_dirs["llama_gqa_untied"])


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(0).integers(0, VOCAB, size=(2, 10))


@pytest.mark.parametrize("site", [*SITES, "embed"])
def test_replacing_with_own_values_changes_nothing(model, ids, site) -> None:
    clean = jaxedit.forward(model.params, model.config, ids, taps=(site,))
    values = clean.taps[site]
    mask = jnp.ones(values.shape[:-1], bool)
    out = jaxedit.forward(model.params, model.config, ids, interventions={site: iv.replace(mask, values)})
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(clean.logits), atol=1e-6)


@pytest.mark.parametrize("site", SITES)
def test_delta_changes_only_later_tokens_and_later_layers(model, ids, site) -> None:
    c = model.config
    layer, token = 1, 4
    taps = ("resid_pre", "resid_post", "mlp_key")
    clean = jaxedit.forward(model.params, c, ids, taps=taps)
    width = jaxedit.core.decoder.site_widths(c)[site]
    delta = jnp.zeros((c.n_layers, ids.shape[1], width)).at[layer, token].set(3.0)
    out = jaxedit.forward(model.params, c, ids, taps=taps, interventions={site: iv.add(delta)})
    before = slice(0, token)
    np.testing.assert_allclose(
        np.asarray(out.logits[:, before]), np.asarray(clean.logits[:, before]), atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(out.taps["resid_post"][:, :layer]),
        np.asarray(clean.taps["resid_post"][:, :layer]),
        atol=1e-6,
    )
    assert np.abs(np.asarray(out.logits[:, token:] - clean.logits[:, token:])).max() > 1e-3


def test_add_at_embeddings_matches_adding_to_the_input(model, ids) -> None:
    c = model.config
    noise = jax.random.normal(jax.random.key(0), (ids.shape[1], c.d_model))
    out = jaxedit.forward(model.params, c, ids, interventions={"embed": iv.add(noise)})
    tokens = model.params["embed"]["tokens"][ids] + noise
    replaced = jaxedit.forward(
        model.params, c, ids, interventions={"embed": iv.replace(jnp.ones(ids.shape, bool), tokens)}
    )
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(replaced.logits), atol=1e-5)


def test_freeze_under_vmap_equals_loop(model, ids) -> None:
    c = model.config
    one = ids[:1]
    corrupted = jaxedit.forward(
        model.params,
        c,
        one,
        taps=("mlp_out",),
        interventions={"embed": iv.add(0.5 * jnp.ones((one.shape[1], c.d_model)))},
    ).taps["mlp_out"][0]
    masks = jnp.stack(
        [jnp.zeros((c.n_layers, one.shape[1]), bool).at[layer, 3:].set(True) for layer in range(c.n_layers)]
    )

    def run(mask):
        edit = {"mlp_out": iv.freeze(mask, corrupted)}
        return jaxedit.forward(model.params, c, one, interventions=edit).logits[0, -1]

    batched = jax.jit(jax.vmap(run))(masks)
    for layer in range(c.n_layers):
        np.testing.assert_allclose(np.asarray(batched[layer]), np.asarray(run(masks[layer])), atol=1e-5)
    assert np.abs(np.asarray(batched[0] - batched[-1])).max() > 1e-4


def test_bad_interventions_raise(model, ids) -> None:
    c = model.config
    with pytest.raises(ValueError, match="unknown intervention site"):
        jaxedit.forward(model.params, c, ids, interventions={"nowhere": iv.add(jnp.zeros(3))})
    with pytest.raises(ValueError, match="shape"):
        jaxedit.forward(
            model.params, c, ids, interventions={"mlp_out": iv.add(jnp.zeros((c.n_layers, 3, 5)))}
        )
    with pytest.raises(ValueError, match="unknown taps"):
        jaxedit.forward(model.params, c, ids, taps=("attention_weights",))
