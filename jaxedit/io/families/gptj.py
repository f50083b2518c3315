"""GPT-J (`model_type: gptj`): partial interleaved rotary, one LayerNorm feeding parallel attention and MLP.

HF fields handled: vocab_size, n_embd, n_layer, n_head, n_inner, n_positions, rotary_dim,
layer_norm_epsilon, activation_function, tie_word_embeddings, bos/eos/pad_token_id. Ignored: dropouts,
initializer_range, use_cache. A missing `rotary_dim` means the whole head is rotated.

Projections are `torch.nn.Linear` (`[out, in]`): every kernel is transposed. q/k/v/out have no bias;
the MLP and the LM head do.
"""

from __future__ import annotations

from jaxedit.core.config import ModelConfig
from jaxedit.io.families import (
    Field,
    Rule,
    copy,
    linear_rules,
    norm_rules,
    read_fields,
    token_fields,
    transposed,
    write_fields,
)

MODEL_TYPE = "gptj"
BASE_PREFIX = "transformer."
IGNORED = (r".*attn\.bias$", r".*attn\.masked_bias$", r".*embed_positions$")


FIELDS = (
    Field("vocab_size", "vocab_size", 50400),
    Field("d_model", "n_embd", 4096),
    Field("n_layers", "n_layer", 28),
    Field("n_heads", "n_head", 16),
    Field("d_mlp", "n_inner", derived=lambda v: 4 * v["d_model"]),
    Field("max_positions", "n_positions", 2048),
    Field("rotary_dim", "rotary_dim", derived=lambda v: v["d_model"] // v["n_heads"]),
    Field("norm_eps", "layer_norm_epsilon", 1e-5, float),
    Field("activation", "activation_function", "gelu_new", str),
    Field("tie_embeddings", "tie_word_embeddings", False, bool),
    *token_fields(50256, 50256),
)


def config_from_hf(hf: dict) -> ModelConfig:
    fields = read_fields(hf, FIELDS)
    return ModelConfig(
        family=MODEL_TYPE,
        **fields,
        n_kv_heads=fields["n_heads"],
        head_dim=fields["d_model"] // fields["n_heads"],
        norm="layernorm",
        gated_mlp=False,
        positions="rotary",
        rotary_style="interleaved",
        rope_theta=10000.0,
        parallel_residual=True,
        shared_block_norm=True,
        mlp_bias=True,
        lm_head_bias=True,
    )


def hf_config(config: ModelConfig) -> dict:
    return {"model_type": MODEL_TYPE, "architectures": ["GPTJForCausalLM"], **write_fields(config, FIELDS)}


def rules(config: ModelConfig) -> list[Rule]:
    out = [
        copy("transformer.wte.weight", "embed/tokens"),
        *norm_rules("transformer.ln_f", "final_norm", config),
        *norm_rules("transformer.h.{i}.ln_1", "ln1", config),
        *linear_rules("transformer.h.{i}.attn.q_proj", "attn/q", False),
        *linear_rules("transformer.h.{i}.attn.k_proj", "attn/k", False),
        *linear_rules("transformer.h.{i}.attn.v_proj", "attn/v", False),
        *linear_rules("transformer.h.{i}.attn.out_proj", "attn/o", False),
        *linear_rules("transformer.h.{i}.mlp.fc_in", "mlp/in", True),
        *linear_rules("transformer.h.{i}.mlp.fc_out", "mlp/out", True),
        copy("lm_head.bias", "unembed/bias"),
    ]
    if not config.tie_embeddings:
        out.append(transposed("lm_head.weight", "unembed/kernel"))
    return out
