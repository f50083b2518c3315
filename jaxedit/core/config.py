"""`ModelConfig`: the switches and sizes that tell the one decoder which family it is running.

GPT-2, GPT-J, GPT-NeoX and Llama differ only in the switches below (DESIGN.md, principle 3). Family
modules in `jaxedit.io.families` translate Hugging Face `config.json` fields and GGUF metadata into this
dataclass; `jaxedit.core.decoder` reads nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxedit.errors import InputError

Family = Literal["gpt2", "gptj", "gpt_neox", "llama"]
SUPPORTED_FAMILIES: tuple[str, ...] = ("gpt2", "gptj", "gpt_neox", "llama")


class ConfigError(InputError):
    """A configuration that jaxedit cannot run (unknown family, unsupported option, bad sizes)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything `forward` needs to know about a decoder-only transformer.

    Attributes:
      family: Hugging Face `model_type` of the checkpoint (`gpt2`, `gptj`, `gpt_neox`, `llama`).
      vocab_size: rows of the token embedding (V).
      d_model: residual width (D).
      n_layers: number of blocks (L).
      n_heads: query heads (H).
      n_kv_heads: key/value heads (K); `n_heads % n_kv_heads == 0` (grouped-query attention).
      head_dim: width of one head (E).
      d_mlp: hidden width of the MLP (F).
      max_positions: longest sequence the model accepts (context length).
      norm: `layernorm` (with bias) or `rmsnorm` (scale only).
      norm_eps: epsilon inside the norm.
      activation: MLP nonlinearity, an HF name (`gelu_new`, `gelu`, `relu`, `silu`, ...).
      gated_mlp: Llama-style `act(W_gate x) * (W_up x)` MLP.
      positions: `learned` absolute embeddings (GPT-2) or `rotary`.
      rotary_dim: leading dims of each head that are rotated (GPT-J `rotary_dim`, NeoX `rotary_pct`).
      rotary_style: `half` (NeoX/Llama `rotate_half`) or `interleaved` (GPT-J `rotate_every_two`).
      rope_theta: rotary base.
      rope_scaling: HF `rope_scaling` as a sorted tuple of (key, value) pairs, or None.
      parallel_residual: attention and MLP both read the block input (GPT-J, NeoX default).
      shared_block_norm: one norm feeds both sublayers (GPT-J); otherwise `ln2` feeds the MLP.
      qkv_bias / attn_out_bias / mlp_bias / lm_head_bias: which projections carry a bias.
      tie_embeddings: the unembedding is the transposed token embedding.
      bos_token_id / eos_token_id / pad_token_id: special ids (None when the model has none).
      dtype: parameter dtype (`float32` or `bfloat16`); norms and softmax always run in float32.
    """

    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_mlp: int
    max_positions: int
    norm: Literal["layernorm", "rmsnorm"]
    norm_eps: float
    activation: str
    gated_mlp: bool
    positions: Literal["learned", "rotary"]
    rotary_dim: int = 0
    rotary_style: Literal["half", "interleaved"] = "half"
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, object], ...] | None = None
    parallel_residual: bool = False
    shared_block_norm: bool = False
    qkv_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    lm_head_bias: bool = False
    tie_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.family not in SUPPORTED_FAMILIES:
            raise ConfigError(
                f"unsupported model family {self.family!r}; jaxedit supports: "
                + ", ".join(SUPPORTED_FAMILIES)
            )
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_mlp"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.positions == "rotary" and not (0 < self.rotary_dim <= self.head_dim):
            raise ConfigError(f"rotary_dim={self.rotary_dim} must lie in (0, head_dim={self.head_dim}]")
        if self.rotary_dim % 2:
            raise ConfigError(f"rotary_dim={self.rotary_dim} must be even")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")

    @property
    def rope_scaling_dict(self) -> dict[str, object] | None:
        """`rope_scaling` as the dict Hugging Face uses."""
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    def replace(self, **changes: object) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
