"""Llama (`model_type: llama`): RMSNorm, rotate-half rotary, grouped-query attention, gated SiLU MLP.

HF fields handled: vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
num_key_value_heads, head_dim, intermediate_size, max_position_embeddings, rms_norm_eps, hidden_act,
rope_theta / rope_scaling (older configs) or rope_parameters (transformers 5; `linear` and `llama3`
scaling), attention_bias, mlp_bias, tie_word_embeddings, bos/eos/pad_token_id. Rejected:
pretraining_tp > 1 (a training-time split). Ignored: dropouts, initializer_range, use_cache.

Projections are `torch.nn.Linear` (`[out, in]`): every kernel is transposed. `up_proj` is `mlp/in`,
`gate_proj` is `mlp/gate` and `down_proj` is the edited W_out `mlp/out`.
"""

from __future__ import annotations

from jaxedit.core.config import ConfigError, ModelConfig
from jaxedit.io.families import (
    Field,
    Rule,
    copy,
    linear_rules,
    norm_rules,
    read_fields,
    rope_hf,
    rope_settings,
    token_fields,
    transposed,
    write_fields,
)

MODEL_TYPE = "llama"
BASE_PREFIX = "model."
IGNORED = (r".*rotary_emb\.inv_freq$",)


FIELDS = (
    Field("vocab_size", "vocab_size", 32000),
    Field("d_model", "hidden_size", 4096),
    Field("n_layers", "num_hidden_layers", 32),
    Field("n_heads", "num_attention_heads", 32),
    Field("n_kv_heads", "num_key_value_heads", derived=lambda v: v["n_heads"]),
    Field("head_dim", "head_dim", derived=lambda v: v["d_model"] // v["n_heads"]),
    Field("d_mlp", "intermediate_size", 11008),
    Field("max_positions", "max_position_embeddings", 2048),
    Field("norm_eps", "rms_norm_eps", 1e-6, float),
    Field("activation", "hidden_act", "silu", str),
    Field("qkv_bias", "attention_bias", False, bool),
    Field("mlp_bias", "mlp_bias", False, bool),
    Field("tie_embeddings", "tie_word_embeddings", False, bool),
    *token_fields(1, 2),
)


def config_from_hf(hf: dict) -> ModelConfig:
    if int(hf.get("pretraining_tp") or 1) != 1:
        raise ConfigError("llama with pretraining_tp > 1 is not supported")
    fields = read_fields(hf, FIELDS)
    theta, scaling = rope_settings(hf, 10000.0)
    return ModelConfig(
        family=MODEL_TYPE,
        **fields,
        norm="rmsnorm",
        gated_mlp=True,
        positions="rotary",
        rotary_dim=fields["head_dim"],
        rotary_style="half",
        rope_theta=theta,
        rope_scaling=scaling,
        attn_out_bias=fields["qkv_bias"],
    )


def hf_config(config: ModelConfig) -> dict:
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["LlamaForCausalLM"],
        **write_fields(config, FIELDS),
        "rope_parameters": rope_hf(config),
        "rope_theta": config.rope_theta,
    }


def rules(config: ModelConfig) -> list[Rule]:
    layer = "model.layers.{i}"
    out = [
        copy("model.embed_tokens.weight", "embed/tokens"),
        *norm_rules("model.norm", "final_norm", config),
        *norm_rules(f"{layer}.input_layernorm", "ln1", config),
        *norm_rules(f"{layer}.post_attention_layernorm", "ln2", config),
        *linear_rules(f"{layer}.self_attn.q_proj", "attn/q", config.qkv_bias),
        *linear_rules(f"{layer}.self_attn.k_proj", "attn/k", config.qkv_bias),
        *linear_rules(f"{layer}.self_attn.v_proj", "attn/v", config.qkv_bias),
        *linear_rules(f"{layer}.self_attn.o_proj", "attn/o", config.attn_out_bias),
        *linear_rules(f"{layer}.mlp.up_proj", "mlp/in", config.mlp_bias),
        *linear_rules(f"{layer}.mlp.gate_proj", "mlp/gate", config.mlp_bias),
        *linear_rules(f"{layer}.mlp.down_proj", "mlp/out", config.mlp_bias),
    ]
    if not config.tie_embeddings:
        out.append(transposed("lm_head.weight", "unembed/kernel"))
    return out
