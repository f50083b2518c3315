"""GPT-J (`model_type: gptj`): partial interleaved rotary, one LayerNorm feeding parallel attention and MLP.

HF fields handled: vocab_size, n_embd, n_layer, n_head, n_inner, n_positions, rotary_dim,
layer_norm_epsilon, activation_function, tie_word_embeddings, bos/eos/pad_token_id. Ignored: dropouts,
initializer_range, use_cache. A missing `rotary_dim` means the whole head is rotated.

Projections are `torch.nn.Linear` (`[out, in]`): every kernel is transposed. q/k/v/out have no bias;
the MLP and the LM head do.
"""

from __future__ import annotations

from jaxedit.core.config import ModelConfig
from jaxedit.io.families import Rule, copy, first_id, linear_rules, norm_rules, transposed

MODEL_TYPE = "gptj"
BASE_PREFIX = "transformer."
IGNORED = (r".*attn\.bias$", r".*attn\.masked_bias$", r".*embed_positions$")


def config_from_hf(hf: dict) -> ModelConfig:
    d = int(hf.get("n_embd", 4096))
    n_heads = int(hf.get("n_head", 16))
    head_dim = d // n_heads
    return ModelConfig(
        family=MODEL_TYPE,
        vocab_size=int(hf.get("vocab_size", 50400)),
        d_model=d,
        n_layers=int(hf.get("n_layer", 28)),
        n_heads=n_heads,
        n_kv_heads=n_heads,
        head_dim=head_dim,
        d_mlp=int(hf.get("n_inner") or 4 * d),
        max_positions=int(hf.get("n_positions", 2048)),
        norm="layernorm",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        activation=hf.get("activation_function", "gelu_new"),
        gated_mlp=False,
        positions="rotary",
        rotary_dim=int(hf.get("rotary_dim") or head_dim),
        rotary_style="interleaved",
        rope_theta=10000.0,
        parallel_residual=True,
        shared_block_norm=True,
        mlp_bias=True,
        lm_head_bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_token_id=first_id(hf.get("bos_token_id", 50256)),
        eos_token_id=first_id(hf.get("eos_token_id", 50256)),
        pad_token_id=first_id(hf.get("pad_token_id")),
    )


def hf_config(config: ModelConfig) -> dict:
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["GPTJForCausalLM"],
        "vocab_size": config.vocab_size,
        "n_embd": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": config.d_mlp,
        "n_positions": config.max_positions,
        "rotary_dim": config.rotary_dim,
        "layer_norm_epsilon": config.norm_eps,
        "activation_function": config.activation,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }


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
