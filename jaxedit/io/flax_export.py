"""`save_flax`: jaxedit params out as a Hugging Face Flax checkpoint (`flax_model.msgpack` + `config.json`).

The file holds the nested params dict of transformers' Flax class for the family (`FLAX_CLASSES`),
serialised with `flax.serialization.msgpack_serialize` (what `FlaxPreTrainedModel.save_pretrained`
writes with `to_bytes`). Names come from the family's table (`jaxedit.io.families`), the PyTorch names
split at the dots, with the leaf renamed the way transformers' PyTorch -> Flax conversion renames it:
`kernel` (the transposed `weight`) for a projection, `embedding` for an embedding, `scale` for a
LayerNorm's weight (Llama's RMSNorm keeps `weight`), `bias` as is. Loading it back is
`jaxedit.io.checkpoints.flax_msgpack_source`, the inverse.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxedit.core.config import ModelConfig
from jaxedit.core.layout import Params
from jaxedit.errors import InputError
from jaxedit.io.checkpoints import FLAX_INDEX, FLAX_WEIGHTS
from jaxedit.io.families import Rule, family_module
from jaxedit.io.files import owned_files, write_owned
from jaxedit.io.loading import WEIGHT_FILES, Model, check_save_target, hf_state_dict

# transformers' Flax class per family; GPT-NeoX has none, so there is no Flax layout to write it in
FLAX_CLASSES = {"gpt2": "FlaxGPT2LMHeadModel", "gptj": "FlaxGPTJForCausalLM", "llama": "FlaxLlamaForCausalLM"}
# classes whose LM head always reads its own `lm_head/kernel`, tied embeddings or not
OWN_HEAD = {"llama"}
FLAX_WEIGHT_FILES = (*WEIGHT_FILES, "flax_model*.msgpack", FLAX_INDEX)


def _leaf(rule: Rule, config: ModelConfig) -> tuple[str, bool]:
    """The Flax leaf name of a rule's tensor and whether it is stored transposed."""
    param = rule.params[0]
    if param in ("embed/tokens", "embed/positions"):
        return "embedding", False
    if param.endswith("/scale"):
        return ("scale" if config.norm == "layernorm" else "weight"), False
    if param.endswith("/kernel"):
        return "kernel", True
    if param.endswith("/bias"):
        return "bias", False
    raise InputError(f"no Flax name for {rule.hf} (param {param}) of the {config.family} layout")


def _put(tree: dict, path: list[str], array: np.ndarray) -> None:
    *modules, leaf = path
    for module in modules:
        tree = tree.setdefault(module, {})
    if leaf in tree:
        raise InputError(f"two tensors would be saved as Flax key {'/'.join(path)!r}")
    tree[leaf] = array


def flax_params(model: Model) -> dict:
    """The model's params as the nested dict (float32 numpy) of its family's transformers Flax class.

    Raises `InputError` for a family transformers has no Flax class for, or a model carrying adaptor
    neurons (see `jaxedit.io.loading.hf_state_dict`).
    """
    config = model.config
    if config.family not in FLAX_CLASSES:
        raise InputError(
            f"transformers has no Flax class for {config.family} models (it has "
            f"{', '.join(FLAX_CLASSES.values())}); save_hf writes safetensors for them"
        )
    state = hf_state_dict(model)
    rules = family_module(config.family).rules(config)
    tree: dict = {}
    for rule in rules:
        leaf, transposed = _leaf(rule, config)
        names = [rule.hf.format(i=i) for i in range(config.n_layers)] if rule.per_layer else [rule.hf]
        for name in names:
            array = state[name]
            _put(tree, [*name.split(".")[:-1], leaf], np.ascontiguousarray(array.T) if transposed else array)
    if config.tie_embeddings and config.family in OWN_HEAD:  # its Flax class cannot share the embedding
        (tokens,) = (rule.hf for rule in rules if rule.params == ("embed/tokens",))
        _put(tree, ["lm_head", "kernel"], np.ascontiguousarray(state[tokens].T))
    return tree


def _other_weights(directory: Path, produced: set[str]) -> list[str]:
    """Weight files in `directory`, not jaxedit's, that a loader could read instead of the saved msgpack."""
    found = {p.name for pattern in FLAX_WEIGHT_FILES for p in directory.glob(pattern)}
    return sorted(found - produced - owned_files(directory))


def save_flax(
    model: Model | Params,
    directory: str | Path,
    *,
    config: ModelConfig | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `flax_model.msgpack`, `config.json` (and a `Model`'s tokenizer) for transformers' Flax class.

    Args:
      model: a `Model`, or a params pytree together with `config`.
      directory: where to write. The files are jaxedit's own there (`jaxedit.io.files.write_owned`): other
        files are kept, a file of the same name that jaxedit did not write refuses the save unless
        `overwrite`, and other weight files a loader could read instead (safetensors, `.bin`, Flax
        shards) refuse it always. The folder a `Model` was loaded from is refused unless `overwrite`.
      config: the `ModelConfig` of bare params (ignored for a `Model`).
      overwrite: replace files of the same name that jaxedit did not write.

    Returns:
      `directory`.
    """
    from flax.serialization import msgpack_serialize

    if not isinstance(model, Model):
        if config is None:
            raise InputError("save_flax of a params pytree needs its config= (a ModelConfig)")
        model = Model(config=config, params=model)
    target = check_save_target(model, directory, overwrite=overwrite)
    weights = msgpack_serialize(flax_params(model))
    hf = family_module(model.config.family).hf_config(model.config)
    hf["torch_dtype"] = "float32"

    def tokenizer(staging: Path) -> None:
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(staging))

    return write_owned(
        target,
        {"config.json": json.dumps(hf, indent=2).encode(), FLAX_WEIGHTS: weights},
        (tokenizer,),
        overwrite=overwrite,
        what="the saved Flax model",
        conflicts=_other_weights,
    )
