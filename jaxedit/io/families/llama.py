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
from jaxedit.io import families as fam

MODEL_TYPE = "llama"
BASE_PREFIX = "model."
IGNORED = (r".*rotary_emb\.inv_freq$",)


FIELDS = (
    *fam.size_fields(fam.HF_SIZE_KEYS, (32000, 4096, 32, 32, 2048)),
    fam.Field("n_kv_heads", "num_key_value_heads", derived=lambda v: v["n_heads"]),
    fam.Field("head_dim", "head_dim", derived=lambda v: v["d_model"] // v["n_heads"]),
    fam.Field("d_mlp", "intermediate_size", 11008),
    fam.Field("norm_eps", "rms_norm_eps", 1e-6, float),
    fam.Field("mlp_bias", "mlp_bias", False, bool),
    *fam.hf_block_fields("silu", qkv_bias=False, bos=1, eos=2),
)


def config_from_hf(hf: dict) -> ModelConfig:
    if int(hf.get("pretraining_tp") or 1) != 1:
        raise ConfigError("llama with pretraining_tp > 1 is not supported")
    fields = fam.read_fields(hf, FIELDS)
    theta, scaling = fam.rope_settings(hf, 10000.0)
    rotary = {
        "rotary_dim": fields["head_dim"],
        "rotary_style": "half",
        "rope_theta": theta,
        "rope_scaling": scaling,
    }
    block = {"norm": "rmsnorm", "gated_mlp": True, "attn_out_bias": fields["qkv_bias"]}
    return ModelConfig(family=MODEL_TYPE, **fields, positions="rotary", **rotary, **block)


def hf_config(config: ModelConfig) -> dict:
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["LlamaForCausalLM"],
        **fam.write_fields(config, FIELDS),
        "rope_parameters": fam.rope_hf(config),
        "rope_theta": config.rope_theta,
    }


def rules(config: ModelConfig) -> list[fam.Rule]:
    layer = "model.layers.{i}"
    out = [
        fam.copy("model.embed_tokens.weight", "embed/tokens"),
        *fam.norm_rules("model.norm", "final_norm", config),
        *fam.norm_rules(f"{layer}.input_layernorm", "ln1", config),
        *fam.norm_rules(f"{layer}.post_attention_layernorm", "ln2", config),
        *fam.linear_rules(f"{layer}.self_attn.q_proj", "attn/q", config.qkv_bias),
        *fam.linear_rules(f"{layer}.self_attn.k_proj", "attn/k", config.qkv_bias),
        *fam.linear_rules(f"{layer}.self_attn.v_proj", "attn/v", config.qkv_bias),
        *fam.linear_rules(f"{layer}.self_attn.o_proj", "attn/o", config.attn_out_bias),
        *fam.linear_rules(f"{layer}.mlp.up_proj", "mlp/in", config.mlp_bias),
        *fam.linear_rules(f"{layer}.mlp.gate_proj", "mlp/gate", config.mlp_bias),
        *fam.linear_rules(f"{layer}.mlp.down_proj", "mlp/out", config.mlp_bias),
    ]
    if not config.tie_embeddings:
        out.append(fam.transposed("lm_head.weight", "unembed/kernel"))
    return out
