"""GPT-NeoX (`model_type: gpt_neox`): partial rotate-half rotary, LayerNorm, parallel or sequential blocks.

HF fields handled: vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
max_position_embeddings, layer_norm_eps, hidden_act, use_parallel_residual, attention_bias,
tie_word_embeddings, rotary_pct / rotary_emb_base (older configs) or rope_parameters
(`partial_rotary_factor`, `rope_theta`; transformers 5), bos/eos/pad_token_id. Ignored: dropouts,
initializer_range, use_cache, classifier_dropout, is_decoder.

`query_key_value` is one `[3D, D]` Linear whose output axis is laid out per head as
`[H, (q, k, v), E]`; it is split into three `[D, H*E]` kernels. `dense_4h_to_h` is the edited W_out.
"""

from __future__ import annotations

import numpy as np

from jaxedit.core.config import ModelConfig
from jaxedit.io import families as fam

MODEL_TYPE = "gpt_neox"
BASE_PREFIX = "gpt_neox."
# transformers 5 saves the LM head as `lm_head.weight`; original checkpoints call it `embed_out.weight`.
ALIASES = {"embed_out.weight": "lm_head.weight"}
IGNORED = (r".*attention\.bias$", r".*attention\.masked_bias$", r".*rotary_emb\.inv_freq$")


FIELDS = (
    *fam.size_fields(fam.HF_SIZE_KEYS, (50432, 6144, 44, 64, 2048)),
    fam.Field("d_mlp", "intermediate_size", derived=lambda v: 4 * v["d_model"]),
    fam.Field("norm_eps", "layer_norm_eps", 1e-5, float),
    fam.Field("parallel_residual", "use_parallel_residual", True, bool),
    *fam.hf_block_fields("gelu", qkv_bias=True, bos=0, eos=2),
)


def config_from_hf(hf: dict) -> ModelConfig:
    fields = fam.read_fields(hf, FIELDS)
    heads = fam.layernorm_mha(fields)
    rope_params = hf.get("rope_parameters") or {}
    pct = float(rope_params.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)))
    theta, scaling = fam.rope_settings(hf, 10000.0, theta_key="rotary_emb_base")
    rotary = {
        "rotary_dim": int(heads["head_dim"] * pct),
        "rotary_style": "half",
        "rope_theta": theta,
        "rope_scaling": scaling,
    }
    biases = {"attn_out_bias": fields["qkv_bias"], "mlp_bias": True}
    return ModelConfig(family=MODEL_TYPE, **fields, **heads, positions="rotary", **rotary, **biases)


def hf_config(config: ModelConfig) -> dict:
    rope = fam.rope_hf(config)
    rope["partial_rotary_factor"] = config.rotary_dim / config.head_dim
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["GPTNeoXForCausalLM"],
        **fam.write_fields(config, FIELDS),
        "rope_parameters": rope,
        "rotary_pct": config.rotary_dim / config.head_dim,
        "rotary_emb_base": config.rope_theta,
    }


def _qkv_rules(config: ModelConfig) -> list[fam.Rule]:
    h, e, d = config.n_heads, config.head_dim, config.d_model

    def load_w(a: np.ndarray) -> tuple[np.ndarray, ...]:
        per_head = a.reshape(h, 3, e, d)  # [H, (q,k,v), E, D]
        return tuple(per_head[:, j].reshape(h * e, d).T for j in range(3))  # 3 x [D, H*E]

    def save_w(ps: tuple[np.ndarray, ...]) -> np.ndarray:
        return np.stack([p.T.reshape(h, e, d) for p in ps], axis=1).reshape(3 * h * e, d)

    def load_b(a: np.ndarray) -> tuple[np.ndarray, ...]:
        per_head = a.reshape(h, 3, e)
        return tuple(per_head[:, j].reshape(h * e) for j in range(3))

    def save_b(ps: tuple[np.ndarray, ...]) -> np.ndarray:
        return np.stack([p.reshape(h, e) for p in ps], axis=1).reshape(3 * h * e)

    name = "gpt_neox.layers.{i}.attention.query_key_value"
    out = [fam.Rule(f"{name}.weight", ("attn/q/kernel", "attn/k/kernel", "attn/v/kernel"), load_w, save_w)]
    if config.qkv_bias:
        out.append(fam.Rule(f"{name}.bias", ("attn/q/bias", "attn/k/bias", "attn/v/bias"), load_b, save_b))
    return out


def rules(config: ModelConfig) -> list[fam.Rule]:
    out = [
        fam.Rule("gpt_neox.embed_in.weight", ("embed/tokens",), lambda a: (a,), lambda ps: ps[0]),
        *fam.norm_rules("gpt_neox.final_layer_norm", "final_norm", config),
        *fam.norm_rules("gpt_neox.layers.{i}.input_layernorm", "ln1", config),
        *fam.norm_rules("gpt_neox.layers.{i}.post_attention_layernorm", "ln2", config),
        *_qkv_rules(config),
        *fam.linear_rules("gpt_neox.layers.{i}.attention.dense", "attn/o", config.attn_out_bias),
        *fam.linear_rules("gpt_neox.layers.{i}.mlp.dense_h_to_4h", "mlp/in", True),
        *fam.linear_rules("gpt_neox.layers.{i}.mlp.dense_4h_to_h", "mlp/out", True),
    ]
    if not config.tie_embeddings:
        out.append(fam.transposed("embed_out.weight", "unembed/kernel"))
    return out
