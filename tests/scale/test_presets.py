"""Presets of the papers' models: published sizes, configs from files, per-device parameter bytes."""

from __future__ import annotations

import json

import pytest

from jaxedit.core import layout
from jaxedit.core.config import ConfigError
from jaxedit.scale import presets


@pytest.mark.parametrize("name", sorted(presets.HF_CONFIGS))
def test_presets_have_the_published_parameter_counts(name) -> None:
    count = layout.param_count(presets.config(name))
    assert abs(count / presets.PUBLISHED_PARAMS[name] - 1) < 1e-3


def test_preset_shapes_and_switches() -> None:
    gptj, neox, llama = presets.config("gptj-6b"), presets.config("neox-20b"), presets.config("llama2-7b")
    assert (gptj.d_model, gptj.n_layers, gptj.rotary_dim, gptj.rotary_style) == (4096, 28, 64, "interleaved")
    assert gptj.lm_head_bias and gptj.shared_block_norm and not gptj.tie_embeddings
    assert (neox.d_mlp, neox.rotary_dim, neox.parallel_residual) == (24576, 24, True)
    assert (llama.d_mlp, llama.norm, llama.gated_mlp) == (11008, "rmsnorm", True)
    assert presets.config("gpt2-xl").tie_embeddings
    small = presets.config("gptj-6b", dtype="bfloat16", n_layers=2)
    assert (small.n_layers, small.dtype, small.d_model) == (2, "bfloat16", 4096)


def test_config_from_a_file_or_directory_and_bad_names(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(presets.HF_CONFIGS["llama2-7b"]))
    assert presets.config(tmp_path) == presets.config(tmp_path / "config.json") == presets.config("llama2-7b")
    with pytest.raises(ConfigError, match="neither a preset"):
        presets.config("gptj-7b")


def test_per_device_parameter_bytes_split_over_the_model_axis() -> None:
    gptj = presets.config("gptj-6b", dtype="bfloat16")
    total = 2 * layout.param_count(gptj)
    per_device = presets.per_device_param_bytes(gptj, {"data": 1, "model": 8})
    assert abs(per_device / (total / 8) - 1) < 0.15
    assert presets.per_device_param_bytes(gptj, {"data": 8, "model": 1}) == total
    gpt2 = presets.config("gpt2-xl")
    with pytest.raises(ValueError, match="does not divide"):  # GPT-2 XL's 50,257-token vocabulary
        presets.per_device_param_bytes(gpt2, {"model": 8})
    replicated = presets.per_device_param_bytes(gpt2, {"model": 8}, uneven="replicate")
    whole, vocab = 4 * layout.param_count(gpt2), 4 * 50257 * 1600  # the token embedding stays whole
    split = sum(
        4 * 48 * n for n in (1600 * 4800, 4800, 1600 * 1600, 2 * 1600 * 6400, 6400)
    )  # kernels, biases
    assert replicated == pytest.approx(whole - split * 7 / 8, rel=1e-3)
    assert replicated > vocab + (whole - vocab) / 8
