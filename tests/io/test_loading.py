"""Loading (safetensors, sharded, .bin, GGUF), saving for transformers, and clear errors on bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from hf_tiny import VOCAB, build_hf_model, save_tiny

import jaxedit
from jaxedit.core.config import ConfigError
from jaxedit.errors import FilesError
from jaxedit.io.checkpoints import WeightsError
from jaxedit.io.gguf import unpermute_rotary

IDS = np.random.default_rng(0).integers(0, VOCAB, size=(2, 9))


def hf_logits(hf_model: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.tensor(IDS)).logits.numpy()


def jax_logits(model: jaxedit.Model) -> np.ndarray:
    return np.asarray(jaxedit.forward(model.params, model.config, IDS).logits)


def test_sharded_safetensors_with_index(tmp_path: Path) -> None:
    hf = save_tiny("llama_gqa_untied", tmp_path / "m", max_shard_size="40KB")
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
    np.testing.assert_allclose(jax_logits(jaxedit.load_model(tmp_path / "m")), hf_logits(hf), atol=1e-4)


def test_pytorch_bin_checkpoint(tmp_path: Path) -> None:
    hf = build_hf_model("neox_parallel")
    (tmp_path / "m").mkdir()
    hf.config.to_json_file(str(tmp_path / "m" / "config.json"))
    torch.save(hf.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    np.testing.assert_allclose(jax_logits(jaxedit.load_model(tmp_path / "m")), hf_logits(hf), atol=1e-4)


@pytest.mark.parametrize("name", ["gpt2", "gptj", "neox_sequential", "llama_gqa_untied", "llama_tied"])
def test_save_hf_reloads_in_transformers_with_same_logits(name: str, tiny_dirs, tmp_path: Path) -> None:
    model = jaxedit.load_model(tiny_dirs[name])
    out = jaxedit.save_hf(model, tmp_path / "saved")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    np.testing.assert_allclose(hf_logits(reloaded), jax_logits(model), atol=1e-4)
    again = jaxedit.load_model(out)
    np.testing.assert_array_equal(jax_logits(again), jax_logits(model))


def test_save_hf_keeps_other_files_and_refuses_to_replace_foreign_ones(tiny_dirs, tmp_path: Path) -> None:
    target = tmp_path / "saved"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    model = jaxedit.load_model(tiny_dirs["gpt2"])
    jaxedit.save_hf(model, target)
    assert (target / "notes.txt").read_text() == "mine" and (target / "model.safetensors").exists()
    jaxedit.save_hf(model, target)  # its own files: replaced
    (target / "config.json").unlink()
    (target / "config.json").write_text("{}")  # now the user's
    with pytest.raises(FilesError, match=r"config\.json, not written by jaxedit"):
        jaxedit.save_hf(model, target)
    assert (target / "config.json").read_text() == "{}"
    jaxedit.save_hf(model, target, overwrite=True)
    assert jaxedit.load_model(target).config == model.config and (target / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # no staging left behind


def _llama_gguf(path: Path, hf: transformers.PreTrainedModel, arch: str = "llama") -> None:
    """Write a tiny llama GGUF the way llama.cpp's converter does (Q/K rows permuted)."""
    c = hf.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_uint32(f"{arch}.vocab_size", c.vocab_size)

    def permute(w: np.ndarray, heads: int) -> np.ndarray:  # inverse of unpermute_rotary
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    parts = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for name, tensor in hf.state_dict().items():
        array = tensor.numpy().astype(np.float32)
        if name in names:
            writer.add_tensor(names[name], array)
            continue
        _, _, layer, *rest = name.split(".")
        part = ".".join(rest[:-1])
        if part == "self_attn.q_proj":
            array = permute(array, c.num_attention_heads)
        elif part == "self_attn.k_proj":
            array = permute(array, c.num_key_value_heads)
        writer.add_tensor(f"blk.{layer}.{parts[part]}.weight", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_llama_loads_with_rotary_permutation_undone(tmp_path: Path) -> None:
    hf = build_hf_model("llama_gqa_untied")
    _llama_gguf(tmp_path / "tiny.gguf", hf)
    model = jaxedit.load_model(tmp_path / "tiny.gguf")
    assert model.tokenizer is None
    np.testing.assert_allclose(jax_logits(model), hf_logits(hf), atol=1e-4)


def test_unpermute_inverts_llama_cpp_permutation() -> None:
    w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    permuted = w.reshape(2, 2, 2, 3).swapaxes(1, 2).reshape(8, 3)
    np.testing.assert_array_equal(unpermute_rotary(permuted, 2), w)


# ----------------------------------------------------------------------------- bad input


def test_unsupported_model_type_lists_supported(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match=r"'bert'.*gpt2, gptj, gpt_neox, llama"):
        jaxedit.load_model(tmp_path / "m")


def test_unsupported_rope_scaling(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="yarn"):
        jaxedit.io.families.config_from_hf(
            {"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 2}}
        )


def test_missing_weights(tmp_path: Path, tiny_dirs) -> None:
    (tmp_path / "m").mkdir()
    shutil.copy(tiny_dirs["gpt2"] / "config.json", tmp_path / "m")
    with pytest.raises(WeightsError, match="no weights found"):
        jaxedit.load_model(tmp_path / "m")


def test_missing_shard(tmp_path: Path) -> None:
    save_tiny("llama_gqa_untied", tmp_path / "m", max_shard_size="40KB")
    shard = sorted((tmp_path / "m").glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(WeightsError, match=re.escape(shard.name)):
        jaxedit.load_model(tmp_path / "m")


def test_truncated_weights(tmp_path: Path, tiny_dirs) -> None:
    shutil.copytree(tiny_dirs["gpt2"], tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"model\.safetensors"):
        jaxedit.load_model(tmp_path / "m")


@pytest.mark.parametrize(
    ("family", "tensor", "change", "named"),
    [
        ("gptj", "transformer.h.1.mlp.fc_out.weight", None, r"transformer\.h\.1\.mlp\.fc_out\.weight"),
        ("llama_tied", "model.layers.0.mlp.down_proj.weight", lambda w: w[:, :10], "mlp/out/kernel"),
    ],
    ids=["missing", "wrongly-shaped"],
)
def test_a_missing_or_wrongly_shaped_tensor_is_named(tmp_path: Path, family, tensor, change, named) -> None:
    hf = build_hf_model(family)
    (tmp_path / "m").mkdir()
    hf.config.to_json_file(str(tmp_path / "m" / "config.json"))
    state = dict(hf.state_dict())
    if change is None:
        del state[tensor]
    else:
        state[tensor] = change(state[tensor])
    torch.save(state, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(WeightsError, match=named):
        jaxedit.load_model(tmp_path / "m")


def test_gguf_of_unsupported_architecture(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "falcon")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(WeightsError, match=r"'falcon'.*llama"):
        jaxedit.load_model(tmp_path / "x.gguf")


def test_truncated_gguf(tmp_path: Path) -> None:
    hf = build_hf_model("llama_tied")
    _llama_gguf(tmp_path / "t.gguf", hf)
    data = (tmp_path / "t.gguf").read_bytes()
    (tmp_path / "t.gguf").write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match=r"t\.gguf"):
        jaxedit.load_model(tmp_path / "t.gguf")


def test_unknown_spec() -> None:
    with pytest.raises(WeightsError, match="neither an embedded model"):
        jaxedit.load_model("no-such-model")


def test_token_ids_out_of_range_and_too_long(tiny_dirs) -> None:
    model = jaxedit.load_model(tiny_dirs["gpt2"])
    with pytest.raises(ValueError, match="out of range"):
        jaxedit.forward(model.params, model.config, np.array([[1, VOCAB]]))
    with pytest.raises(ValueError, match="out of range"):
        jaxedit.forward(model.params, model.config, np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="longer than the model's context"):
        jaxedit.forward(model.params, model.config, np.zeros((1, 65), int))
    with pytest.raises(ValueError, match=r"\[batch, tokens\]"):
        jaxedit.forward(model.params, model.config, np.zeros(5, int))
