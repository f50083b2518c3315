"""GPT-2 (`model_type: gpt2`): learned positions, LayerNorm, sequential blocks, fused Conv1D QKV.

HF fields handled: vocab_size, n_embd, n_layer, n_head, n_inner, n_positions, layer_norm_epsilon,
activation_function, tie_word_embeddings, bos/eos/pad_token_id. Rejected when not at their default:
scale_attn_weights (must be true), scale_attn_by_inverse_layer_idx and add_cross_attention (must be
false). Ignored (training or head-specific): dropouts, initializer_range, summary_*, use_cache,
reorder_and_upcast_attn (numerics only).

GPT-2 stores its projections as Conv1D, already `[in, out]`: nothing is transposed. `c_attn` holds
q, k and v side by side on its output axis.
"""

from __future__ import annotations

import numpy as np

from jaxedit.core.config import ConfigError, ModelConfig
from jaxedit.io.families import Rule, copy, first_id, linear_rules, norm_rules

MODEL_TYPE = "gpt2"
BASE_PREFIX = "transformer."
IGNORED = (r".*attn\.bias$", r".*attn\.masked_bias$")


def config_from_hf(hf: dict) -> ModelConfig:
    if not hf.get("scale_attn_weights", True):
        raise ConfigError("gpt2 with scale_attn_weights=false is not supported")
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if hf.get(flag, False):
            raise ConfigError(f"gpt2 with {flag}=true is not supported")
    d = int(hf.get("n_embd", 768))
    n_heads = int(hf.get("n_head", 12))
    return ModelConfig(
        family=MODEL_TYPE,
        vocab_size=int(hf.get("vocab_size", 50257)),
        d_model=d,
        n_layers=int(hf.get("n_layer", 12)),
        n_heads=n_heads,
        n_kv_heads=n_heads,
        head_dim=d // n_heads,
        d_mlp=int(hf.get("n_inner") or 4 * d),
        max_positions=int(hf.get("n_positions", 1024)),
        norm="layernorm",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        activation=hf.get("activation_function", "gelu_new"),
        gated_mlp=False,
        positions="learned",
        qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        bos_token_id=first_id(hf.get("bos_token_id", 50256)),
        eos_token_id=first_id(hf.get("eos_token_id", 50256)),
        pad_token_id=first_id(hf.get("pad_token_id")),
    )


def hf_config(config: ModelConfig) -> dict:
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_embd": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": config.d_mlp,
        "n_positions": config.max_positions,
        "layer_norm_epsilon": config.norm_eps,
        "activation_function": config.activation,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }


def rules(config: ModelConfig) -> list[Rule]:
    qkv = ("attn/q/kernel", "attn/k/kernel", "attn/v/kernel")
    qkv_bias = ("attn/q/bias", "attn/k/bias", "attn/v/bias")
    out = [
        copy("transformer.wte.weight", "embed/tokens"),
        copy("transformer.wpe.weight", "embed/positions"),
        *norm_rules("transformer.ln_f", "final_norm", config),
        *norm_rules("transformer.h.{i}.ln_1", "ln1", config),
        *norm_rules("transformer.h.{i}.ln_2", "ln2", config),
        Rule(
            "transformer.h.{i}.attn.c_attn.weight",
            qkv,
            lambda a: tuple(np.split(a, 3, axis=1)),  # [D, 3D] -> 3 x [D, D]
            lambda ps: np.concatenate(ps, axis=1),
        ),
        Rule(
            "transformer.h.{i}.attn.c_attn.bias",
            qkv_bias,
            lambda a: tuple(np.split(a, 3)),
            lambda ps: np.concatenate(ps),
        ),
        *linear_rules("transformer.h.{i}.attn.c_proj", "attn/o", True, conv1d=True),
        *linear_rules("transformer.h.{i}.mlp.c_fc", "mlp/in", True, conv1d=True),
        *linear_rules("transformer.h.{i}.mlp.c_proj", "mlp/out", True, conv1d=True),
    ]
    if not config.tie_embeddings:
        out.append(Rule("lm_head.weight", ("unembed/kernel",), lambda a: (a.T,), lambda ps: ps[0].T))
    return out
