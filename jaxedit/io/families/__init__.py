"""Family modules: Hugging Face config fields and tensor names mapped onto the one decoder.

Each family module (`gpt2`, `gptj`, `neox`, `llama`) exposes:

- `MODEL_TYPE`: the HF `model_type` it handles;
- `FIELDS`: the `config.json` keys it maps one-to-one onto `ModelConfig` fields (`Field`), read by
  `config_from_hf` and written back by `hf_config` from the same table;
- `config_from_hf(hf: dict) -> ModelConfig`: reads the fields it handles, rejects settings it cannot run;
- `hf_config(config) -> dict`: the `config.json` that `transformers` needs to open a saved model;
- `rules(config) -> list[Rule]`: one entry per HF tensor, naming the params it fills and the exact
  transposes/splits (never guessed from shapes);
- `BASE_PREFIX` and `IGNORED`: the base-model prefix of tensor names (checkpoints of the bare model
  omit it) and the regexes of buffers that carry no weights.

Logical axes for sharding are declared once in `jaxedit.core.layout` (the families share one param layout);
`partition_specs(config)` below hands them out per family.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from jaxedit.core.config import SUPPORTED_FAMILIES, ConfigError, ModelConfig


@dataclasses.dataclass(frozen=True)
class Rule:
    """One HF tensor <-> one or more jaxedit params.

    Attributes:
      hf: tensor name; `{i}` stands for the layer index in per-layer rules.
      params: param paths it fills (relative to `layers/` for per-layer rules, else to the root).
      load: HF array -> tuple of param arrays (in `params` order).
      save: tuple of param arrays -> HF array.
    """

    hf: str
    params: tuple[str, ...]
    load: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    save: Callable[[tuple[np.ndarray, ...]], np.ndarray]

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf


def copy(hf: str, param: str) -> Rule:
    """A tensor stored the same way in both (norms, biases, embeddings, Conv1D `[in, out]` kernels)."""
    return Rule(hf, (param,), lambda a: (a,), lambda ps: ps[0])


def transposed(hf: str, param: str) -> Rule:
    """A `torch.nn.Linear` weight `[out, in]` stored as a kernel `[in, out]`."""
    return Rule(hf, (param,), lambda a: (a.T,), lambda ps: ps[0].T)


def linear_rules(hf_prefix: str, param: str, bias: bool, *, conv1d: bool = False) -> list[Rule]:
    """Weight (and bias) rules of one projection."""
    make = copy if conv1d else transposed
    out = [make(f"{hf_prefix}.weight", f"{param}/kernel")]
    if bias:
        out.append(copy(f"{hf_prefix}.bias", f"{param}/bias"))
    return out


def norm_rules(hf_prefix: str, param: str, config: ModelConfig) -> list[Rule]:
    """Scale (and bias for LayerNorm) rules of one norm."""
    out = [copy(f"{hf_prefix}.weight", f"{param}/scale")]
    if config.norm == "layernorm":
        out.append(copy(f"{hf_prefix}.bias", f"{param}/bias"))
    return out


def first_id(value: Any) -> int | None:
    """HF special token ids may be an int, a list or None."""
    if isinstance(value, list | tuple):
        return int(value[0]) if value else None
    return None if value is None else int(value)


_ABSENT = object()


@dataclasses.dataclass(frozen=True)
class Field:
    """One `config.json` key read into, and written back from, one `ModelConfig` field.

    Attributes:
      name: the `ModelConfig` field.
      hf: the `config.json` key.
      default: the value when the key is absent (an explicit null stays None).
      cast: applied to a value that is not None.
      derived: when given, the value for an absent or null key, computed from the fields read before
        this one (transformers' own reading of `n_inner`, `head_dim`, `num_key_value_heads`, ...).
    """

    name: str
    hf: str
    default: Any = None
    cast: Callable[[Any], Any] = int
    derived: Callable[[dict[str, Any]], Any] | None = None


def token_fields(bos: int | None, eos: int | None) -> tuple[Field, ...]:
    """The special token ids, with the family's defaults for BOS and EOS (no default pad)."""
    return (
        Field("bos_token_id", "bos_token_id", bos, first_id),
        Field("eos_token_id", "eos_token_id", eos, first_id),
        Field("pad_token_id", "pad_token_id", None, first_id),
    )


GPT_SIZE_KEYS = ("n_embd", "n_layer", "n_head", "n_positions")  # GPT-2 and GPT-J name their sizes so
HF_SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings")


def size_fields(keys: tuple[str, ...], sizes: tuple[int, ...]) -> tuple[Field, ...]:
    """The vocabulary, width, depth, heads and context, with the family's defaults `sizes` in that order,
    under its `config.json` names (`keys`: width, depth, heads, context; the vocabulary is always
    `vocab_size`)."""
    names = ("vocab_size", "d_model", "n_layers", "n_heads", "max_positions")
    return tuple(Field(n, k, d) for n, k, d in zip(names, ("vocab_size", *keys), sizes, strict=True))


def hf_block_fields(activation: str, qkv_bias: bool, bos: int | None, eos: int | None) -> tuple[Field, ...]:
    """What the `hidden_size`-style configs (Llama, GPT-NeoX) name alike: the activation, the attention
    bias, tied embeddings (untied by default) and the special tokens, with the family's defaults."""
    return (
        Field("activation", "hidden_act", activation, str),
        Field("qkv_bias", "attention_bias", qkv_bias, bool),
        Field("tie_embeddings", "tie_word_embeddings", False, bool),
        *token_fields(bos, eos),
    )


def layernorm_mha(fields: dict[str, Any]) -> dict[str, Any]:
    """What GPT-2, GPT-J and GPT-NeoX share: a key and value head per query head, heads of width
    `d_model / n_heads`, LayerNorm and an ungated MLP."""
    head_dim = fields["d_model"] // fields["n_heads"]
    return {"n_kv_heads": fields["n_heads"], "head_dim": head_dim, "norm": "layernorm", "gated_mlp": False}


def read_fields(hf: dict, fields: tuple[Field, ...]) -> dict[str, Any]:
    """`ModelConfig` keyword arguments for `fields`, read from a `config.json` dict in table order."""
    values: dict[str, Any] = {}
    for field in fields:
        raw = hf.get(field.hf, _ABSENT)
        if field.derived is not None and (raw is _ABSENT or raw is None):
            raw = field.derived(values)
        elif raw is _ABSENT:
            raw = field.default
        values[field.name] = None if raw is None else field.cast(raw)
    return values


def write_fields(config: ModelConfig, fields: tuple[Field, ...]) -> dict[str, Any]:
    """The `config.json` entries of `fields` (the inverse of `read_fields`)."""
    return {field.hf: getattr(config, field.name) for field in fields}


def rope_settings(
    hf: dict, default_theta: float, theta_key: str = "rope_theta"
) -> tuple[float, tuple | None]:
    """Rotary base and scaling from either `rope_parameters` (transformers 5) or the older fields.

    Returns `(theta, scaling)` with scaling as a sorted tuple of items, None for plain rotary.
    Raises `ConfigError` for scaling kinds the decoder does not implement.
    """
    params = dict(hf.get("rope_parameters") or {})
    legacy = dict(hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", legacy.get("rope_theta", hf.get(theta_key, default_theta))))

    def kind_of(fields: dict) -> str:
        return str(fields.get("rope_type", fields.get("type", "default")))

    # transformers applies whichever of the two names a scaling; two different ones are ambiguous
    kinds = {kind_of(f) for f in (params, legacy) if f} - {"default"}
    if len(kinds) > 1:
        raise ConfigError(
            f"config names two rope scalings ({', '.join(sorted(kinds))} in rope_scaling and rope_parameters); "
            "keep one"
        )
    if not kinds:
        return theta, None
    (kind,) = kinds
    if kind not in ("linear", "llama3"):
        raise ConfigError(f"unsupported rope scaling {kind!r}; jaxedit implements linear and llama3")
    chosen = params if kind_of(params) == kind else legacy
    skip = ("type", "rope_theta", "partial_rotary_factor")
    return theta, tuple(
        sorted(({"rope_type": kind} | {k: v for k, v in chosen.items() if k not in skip}).items())
    )


def rope_hf(config: ModelConfig) -> dict:
    """`rope_parameters` for a saved `config.json`."""
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling:
        params.update(dict(config.rope_scaling))
    return params


def family_module(model_type: str) -> ModuleType:
    """The family module for an HF `model_type`, or a `ConfigError` listing the supported ones."""
    from jaxedit.io.families import gpt2, gptj, llama, neox

    modules = {m.MODEL_TYPE: m for m in (gpt2, gptj, neox, llama)}
    if model_type not in modules:
        raise ConfigError(
            f"unsupported model_type {model_type!r}; jaxedit supports: " + ", ".join(SUPPORTED_FAMILIES)
        )
    return modules[model_type]


def config_from_hf(hf: dict) -> ModelConfig:
    """`ModelConfig` from a Hugging Face `config.json` dict."""
    if "model_type" not in hf:
        raise ConfigError("config.json has no model_type field")
    return family_module(hf["model_type"]).config_from_hf(hf)


def partition_specs(config: ModelConfig) -> dict:
    """Logical axis names of every param of this family (`jaxedit.core.layout.logical_axes`)."""
    from jaxedit.core import layout

    return layout.logical_axes(config)
