"""Published model shapes by name (no weights): GPT-2 XL, GPT-J-6B, GPT-NeoX-20B, Llama-2-7B.

The papers edit these models. A preset is the Hugging Face `config.json` of the released checkpoint
(the fields `ModelConfig` reads), so `config("gptj-6b")` is exactly what loading that checkpoint would
build; `jaxedit plan` compiles programs for them without weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from jaxedit.core import layout
from jaxedit.core.config import ConfigError, ModelConfig
from jaxedit.core.sharding import mesh_axes
from jaxedit.io.families import config_from_hf

HF_CONFIGS: dict[str, dict] = {
    # openai-community/gpt2-xl
    "gpt2-xl": {
        "model_type": "gpt2", "vocab_size": 50257, "n_embd": 1600, "n_layer": 48, "n_head": 25,
        "n_positions": 1024, "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": True, "bos_token_id": 50256, "eos_token_id": 50256,
    },
    # EleutherAI/gpt-j-6b
    "gptj-6b": {
        "model_type": "gptj", "vocab_size": 50400, "n_embd": 4096, "n_layer": 28, "n_head": 16,
        "rotary_dim": 64, "n_positions": 2048, "n_inner": None, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5, "tie_word_embeddings": False, "bos_token_id": 50256, "eos_token_id": 50256,
    },
    # EleutherAI/gpt-neox-20b
    "neox-20b": {
        "model_type": "gpt_neox", "vocab_size": 50432, "hidden_size": 6144, "num_hidden_layers": 44,
        "num_attention_heads": 64, "intermediate_size": 24576, "rotary_pct": 0.25, "rotary_emb_base": 10000,
        "max_position_embeddings": 2048, "hidden_act": "gelu_fast", "layer_norm_eps": 1e-5,
        "use_parallel_residual": True, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0,
    },
    # meta-llama/Llama-2-7b-hf
    "llama2-7b": {
        "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "hidden_act": "silu", "rope_theta": 10000.0,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
    },
}  # fmt: skip

# parameter counts the releases publish (model cards / papers), for checks; GPT-J's card counts 2.5 M
# more than its weights hold (0.04 %)
PUBLISHED_PARAMS: dict[str, int] = {
    "gpt2-xl": 1_557_611_200,
    "gptj-6b": 6_053_381_344,
    "neox-20b": 20_554_567_680,
    "llama2-7b": 6_738_415_616,
}


def config(spec: str | Path | ModelConfig, *, dtype: str | None = None, **changes: object) -> ModelConfig:
    """A `ModelConfig` from a preset name, a `config.json` file, a checkpoint directory or a config.

    `dtype` sets the parameter dtype; `changes` override config fields (e.g. `n_layers=2` for a small
    model of the same family and shape).
    """
    if isinstance(spec, ModelConfig):
        result = spec
    elif str(spec) in HF_CONFIGS:
        result = config_from_hf(HF_CONFIGS[str(spec)])
    else:
        path = Path(spec)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(
                f"{spec!r} is neither a preset ({', '.join(HF_CONFIGS)}) nor a config.json or a directory "
                "holding one"
            )
        result = config_from_hf(json.loads(path.read_text()))
    if dtype is not None:
        changes["dtype"] = dtype
    return result.replace(**changes) if changes else result


def per_device_param_bytes(cfg: ModelConfig, mesh_shape: dict[str, int], uneven: str = "error") -> int:
    """Bytes of parameters each device holds under the default sharding rules on a mesh of this shape
    (`uneven` as in `jaxedit.core.sharding.mesh_axes`; replicated axes count whole)."""
    itemsize = np.dtype(layout.param_dtype(cfg)).itemsize
    shapes = layout.flatten(layout.param_specs(cfg))
    total = 0
    for path, axes in mesh_axes(cfg, mesh_shape, uneven=uneven).items():
        parts = [mesh_shape[a] if a is not None else 1 for a in axes]
        total += math.prod(dim // n for dim, n in zip(shapes[path].shape, parts, strict=True)) * itemsize
    return total
