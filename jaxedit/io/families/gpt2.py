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
from jaxedit.io import families as fam

MODEL_TYPE = "gpt2"
BASE_PREFIX = "transformer."
IGNORED = (r".*attn\.bias$", r".*attn\.masked_bias$")


FIELDS = (
    *fam.size_fields(fam.GPT_SIZE_KEYS, (50257, 768, 12, 12, 1024)),
    fam.Field("d_mlp", "n_inner", derived=lambda v: 4 * v["d_model"]),
    fam.Field("norm_eps", "layer_norm_epsilon", 1e-5, float),
    fam.Field("activation", "activation_function", "gelu_new", str),
    fam.Field("tie_embeddings", "tie_word_embeddings", True, bool),
    *fam.token_fields(50256, 50256),
)


def config_from_hf(hf: dict) -> ModelConfig:
    if not hf.get("scale_attn_weights", True):
        raise ConfigError("gpt2 with scale_attn_weights=false is not supported")
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if hf.get(flag, False):
            raise ConfigError(f"gpt2 with {flag}=true is not supported")
    fields = fam.read_fields(hf, FIELDS)
    biases = {"qkv_bias": True, "attn_out_bias": True, "mlp_bias": True}  # every projection has one
    return ModelConfig(
        family=MODEL_TYPE, **fields, **fam.layernorm_mha(fields), positions="learned", **biases
    )


def hf_config(config: ModelConfig) -> dict:
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["GPT2LMHeadModel"],
        **fam.write_fields(config, FIELDS),
    }


def rules(config: ModelConfig) -> list[fam.Rule]:
    qkv = ("attn/q/kernel", "attn/k/kernel", "attn/v/kernel")
    qkv_bias = ("attn/q/bias", "attn/k/bias", "attn/v/bias")
    out = [
        fam.copy("transformer.wte.weight", "embed/tokens"),
        fam.copy("transformer.wpe.weight", "embed/positions"),
        *fam.norm_rules("transformer.ln_f", "final_norm", config),
        *fam.norm_rules("transformer.h.{i}.ln_1", "ln1", config),
        *fam.norm_rules("transformer.h.{i}.ln_2", "ln2", config),
        fam.Rule(
            "transformer.h.{i}.attn.c_attn.weight",
            qkv,
            lambda a: tuple(np.split(a, 3, axis=1)),  # [D, 3D] -> 3 x [D, D]
            lambda ps: np.concatenate(ps, axis=1),
        ),
        fam.Rule(
            "transformer.h.{i}.attn.c_attn.bias",
            qkv_bias,
            lambda a: tuple(np.split(a, 3)),
            lambda ps: np.concatenate(ps),
        ),
        *fam.linear_rules("transformer.h.{i}.attn.c_proj", "attn/o", True, conv1d=True),
        *fam.linear_rules("transformer.h.{i}.mlp.c_fc", "mlp/in", True, conv1d=True),
        *fam.linear_rules("transformer.h.{i}.mlp.c_proj", "mlp/out", True, conv1d=True),
    ]
    if not config.tie_embeddings:
        out.append(fam.Rule("lm_head.weight", ("unembed/kernel",), lambda a: (a.T,), lambda ps: ps[0].T))
    return out
