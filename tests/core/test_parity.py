"""Parity with `transformers` PyTorch on tiny random models of every family (float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_tiny import TINY_CONFIGS, VOCAB, build_hf_model

import jaxedit
from jaxedit.core import decoder


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_logits_and_hidden_states_match_transformers(name: str, tiny_dirs) -> None:
    hf = build_hf_model(name)
    model = jaxedit.load_model(tiny_dirs[name])
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(2, 13))
    out = jaxedit.forward(model.params, model.config, ids, taps=("resid_post",))
    with torch.no_grad():
        ref = hf(torch.tensor(ids), output_hidden_states=True)
    np.testing.assert_allclose(np.asarray(out.logits), ref.logits.numpy(), atol=1e-4, rtol=0)
    resid = np.asarray(out.taps["resid_post"])  # [B, L, T, D]
    n = model.config.n_layers
    for layer in range(n - 1):
        np.testing.assert_allclose(resid[:, layer], ref.hidden_states[layer + 1].numpy(), atol=1e-5)
    # transformers applies the final norm to its last hidden state
    last = decoder.norm(model.config, model.params["final_norm"], resid[:, n - 1])
    np.testing.assert_allclose(np.asarray(last), ref.hidden_states[n].numpy(), atol=1e-5)


def test_scan_equals_unrolled_blocks(tiny_dirs) -> None:
    model = jaxedit.load_model(tiny_dirs["gptj"])
    c, p = model.config, model.params
    ids = np.random.default_rng(1).integers(0, VOCAB, size=(1, 9))
    mask = np.ones_like(ids)
    positions = decoder.positions_from_mask(mask)
    x = decoder.residual_input(c, p, decoder.embed_tokens(p, ids), positions)
    for layer in range(c.n_layers):
        layer_params = {k: v for k, v in _index(p["layers"], layer).items()}
        x = decoder.block(
            c, layer_params, x, decoder.rotary_for(c, positions), decoder.causal_mask(mask), {}
        ).resid
    unrolled = decoder.unembed(c, p, x)
    np.testing.assert_allclose(np.asarray(unrolled), np.asarray(jaxedit.forward(p, c, ids).logits), atol=1e-5)


def _index(tree, i):
    return {k: _index(v, i) if isinstance(v, dict) else v[i] for k, v in tree.items()}


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa_untied", "neox_parallel"])
def test_padding_left_and_right_gives_per_prompt_logits(name: str, tiny_dirs) -> None:
    model = jaxedit.load_model(tiny_dirs[name])
    rng = np.random.default_rng(2)
    rows = [rng.integers(0, VOCAB, size=n).tolist() for n in (5, 11, 8)]
    singles = [
        np.asarray(jaxedit.forward(model.params, model.config, np.asarray([r])).logits[0]) for r in rows
    ]
    for side in ("left", "right"):
        ids, mask = jaxedit.core.tokens.pad(rows, 0, side=side, multiple=8)
        logits = np.asarray(jaxedit.forward(model.params, model.config, ids, mask).logits)
        for i, row in enumerate(rows):
            n = len(row)
            got = logits[i, -n:] if side == "left" else logits[i, :n]
            np.testing.assert_allclose(got, singles[i], atol=1e-5, err_msg=f"{side} padding, row {i}")
