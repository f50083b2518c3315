"""GPT-J (`model_type: gptj`): partial interleaved rotary, one LayerNorm feeding parallel attention and MLP.

HF fields handled: vocab_size, n_embd, n_layer, n_head, n_inner, n_positions, rotary_dim,
layer_norm_epsilon, activation_function, tie_word_embeddings, bos/eos/pad_token_id. Ignored: dropouts,
initializer_range, use_cache. A missing `rotary_dim` means the whole head is rotated.

Projections are `torch.nn.Linear` (`[out, in]`): every kernel is transposed. q/k/v/out have no bias;
the MLP and the LM head do.
"""

from __future__ import annotations

from jaxedit.core.config import ModelConfig
from jaxedit.io import families as fam

MODEL_TYPE = "gptj"
BASE_PREFIX = "transformer."
IGNORED = (r".*attn\.bias$", r".*attn\.masked_bias$", r".*embed_positions$")


FIELDS = (
    *fam.size_fields(fam.GPT_SIZE_KEYS, (50400, 4096, 28, 16, 2048)),
    fam.Field("d_mlp", "n_inner", derived=lambda v: 4 * v["d_model"]),
    fam.Field("rotary_dim", "rotary_dim", derived=lambda v: v["d_model"] // v["n_heads"]),
    fam.Field("norm_eps", "layer_norm_epsilon", 1e-5, float),
    fam.Field("activation", "activation_function", "gelu_new", str),
    fam.Field("tie_embeddings", "tie_word_embeddings", False, bool),
    *fam.token_fields(50256, 50256),
)


def config_from_hf(hf: dict) -> ModelConfig:
    fields = fam.read_fields(hf, FIELDS)
    rotary = {"positions": "rotary", "rotary_style": "interleaved", "rope_theta": 10000.0}
    block = {"parallel_residual": True, "shared_block_norm": True}  # one LayerNorm feeds attention and MLP
    biases = {"mlp_bias": True, "lm_head_bias": True}
    return ModelConfig(family=MODEL_TYPE, **fields, **fam.layernorm_mha(fields), **rotary, **block, **biases)


def hf_config(config: ModelConfig) -> dict:
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["GPTJForCausalLM"],
        **fam.write_fields(config, FIELDS),
    }


def rules(config: ModelConfig) -> list[fam.Rule]:
    out = [
        fam.copy("transformer.wte.weight", "embed/tokens"),
        *fam.norm_rules("transformer.ln_f", "final_norm", config),
        *fam.norm_rules("transformer.h.{i}.ln_1", "ln1", config),
        *fam.linear_rules("transformer.h.{i}.attn.q_proj", "attn/q", False),
        *fam.linear_rules("transformer.h.{i}.attn.k_proj", "attn/k", False),
        *fam.linear_rules("transformer.h.{i}.attn.v_proj", "attn/v", False),
        *fam.linear_rules("transformer.h.{i}.attn.out_proj", "attn/o", False),
        *fam.linear_rules("transformer.h.{i}.mlp.fc_in", "mlp/in", True),
        *fam.linear_rules("transformer.h.{i}.mlp.fc_out", "mlp/out", True),
        fam.copy("lm_head.bias", "unembed/bias"),
    ]
    if not config.tie_embeddings:
        out.append(fam.transposed("lm_head.weight", "unembed/kernel"))
    return out
