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
    Rule,
    copy,
    first_id,
    linear_rules,
    norm_rules,
    rope_hf,
    rope_settings,
    transposed,
)

MODEL_TYPE = "llama"
BASE_PREFIX = "model."
IGNORED = (r".*rotary_emb\.inv_freq$",)


def config_from_hf(hf: dict) -> ModelConfig:
    if int(hf.get("pretraining_tp") or 1) != 1:
        raise ConfigError("llama with pretraining_tp > 1 is not supported")
    d = int(hf.get("hidden_size", 4096))
    n_heads = int(hf.get("num_attention_heads", 32))
    head_dim = int(hf.get("head_dim") or d // n_heads)
    theta, scaling = rope_settings(hf, 10000.0)
    return ModelConfig(
        family=MODEL_TYPE,
        vocab_size=int(hf.get("vocab_size", 32000)),
        d_model=d,
        n_layers=int(hf.get("num_hidden_layers", 32)),
        n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        head_dim=head_dim,
        d_mlp=int(hf.get("intermediate_size", 11008)),
        max_positions=int(hf.get("max_position_embeddings", 2048)),
        norm="rmsnorm",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        activation=hf.get("hidden_act", "silu"),
        gated_mlp=True,
        positions="rotary",
        rotary_dim=head_dim,
        rotary_style="half",
        rope_theta=theta,
        rope_scaling=scaling,
        qkv_bias=bool(hf.get("attention_bias", False)),
        attn_out_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_token_id=first_id(hf.get("bos_token_id", 1)),
        eos_token_id=first_id(hf.get("eos_token_id", 2)),
        pad_token_id=first_id(hf.get("pad_token_id")),
    )


def hf_config(config: ModelConfig) -> dict:
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.d_mlp,
        "max_position_embeddings": config.max_positions,
        "rms_norm_eps": config.norm_eps,
        "hidden_act": config.activation,
        "rope_parameters": rope_hf(config),
        "rope_theta": config.rope_theta,
        "attention_bias": config.qkv_bias,
        "mlp_bias": config.mlp_bias,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
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
