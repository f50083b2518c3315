"""Flax `flax_model.msgpack` checkpoints in (`directory_source`) and out (`save_flax`).

The installed transformers (5.x) has no Flax classes, so the Flax checkpoints are built here from the
tiny models' PyTorch tensors with transformers' PyTorch -> Flax rule (`rename_key_and_reshape_tensor`
in transformers 4's `modeling_flax_pytorch_utils.py`) for the module layouts of FlaxGPT2LMHeadModel,
FlaxGPTJForCausalLM and FlaxLlamaForCausalLM, written independently of jaxedit's own mapping.
GPT-NeoX has no Flax class in transformers and jaxedit has no GPT-Neo family: neither is tested.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import chex
import numpy as np
import pytest
from flax.serialization import msgpack_restore, msgpack_serialize
from flax.traverse_util import flatten_dict
from hf_tiny import VOCAB, save_tiny
from safetensors.numpy import load_file

import jaxedit
from jaxedit.errors import FilesError, InputError
from jaxedit.io.checkpoints import WeightsError

FLAX_FAMILIES = ["gpt2", "gptj", "llama_gqa_untied"]
IDS = np.random.default_rng(0).integers(0, VOCAB, size=(2, 7))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved tiny HF models (safetensors) for the families transformers has a Flax class for."""
    root = tmp_path_factory.mktemp("flax_tiny")
    for name in [*FLAX_FAMILIES, "llama_tied", "neox_sequential"]:
        save_tiny(name, root / name)
    return {name: root / name for name in [*FLAX_FAMILIES, "llama_tied", "neox_sequential"]}


def flax_layout(directory: Path) -> dict:
    """The nested params dict transformers' Flax class holds for the PyTorch checkpoint in `directory`.

    Flax modules carry the PyTorch module names; `nn.Embed` stores `embedding`, `nn.LayerNorm` `scale`,
    Llama's RMSNorm `weight`, and `nn.Dense` / GPT-2's `FlaxConv1D` a `kernel` that is the transposed
    2-D PyTorch weight. Tied GPT-2 / GPT-J heads read the embedding; FlaxLlama always has `lm_head`.
    """
    config = json.loads((directory / "config.json").read_text())
    state = load_file(str(directory / "model.safetensors"))
    if config["model_type"] == "llama" and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    tree: dict = {}
    for name, array in state.items():
        *modules, leaf = name.split(".")
        if leaf == "weight" and modules[-1] in ("wte", "wpe", "embed_tokens"):
            leaf = "embedding"
        elif leaf == "weight" and modules[-1] in ("ln_1", "ln_2", "ln_f"):
            leaf = "scale"
        elif leaf == "weight" and array.ndim == 2:
            leaf, array = "kernel", array.T
        node = tree
        for module in modules:
            node = node.setdefault(module, {})
        node[leaf] = np.ascontiguousarray(array)
    return tree


def flax_dir(directory: Path, tree: dict, target: Path) -> Path:
    """A model folder holding only `config.json` and `tree` as `flax_model.msgpack`."""
    target.mkdir(parents=True)
    shutil.copy(directory / "config.json", target / "config.json")
    (target / "flax_model.msgpack").write_bytes(msgpack_serialize(tree))
    return target


def logits(model: jaxedit.Model) -> np.ndarray:
    return np.asarray(jaxedit.forward(model.params, model.config, IDS).logits)


@pytest.mark.parametrize("name", FLAX_FAMILIES)
def test_flax_checkpoint_loads_like_safetensors(name: str, tiny, tmp_path: Path) -> None:
    reference = jaxedit.load_model(tiny[name])
    model = jaxedit.load_model(flax_dir(tiny[name], flax_layout(tiny[name]), tmp_path / "flax"))
    assert model.config == reference.config
    chex.assert_trees_all_equal(model.params, reference.params)
    np.testing.assert_allclose(logits(model), logits(reference), atol=1e-5)


@pytest.mark.parametrize("name", [*FLAX_FAMILIES, "llama_tied"])
def test_save_flax_writes_the_transformers_layout_and_reloads_identically(
    name: str, tiny, tmp_path: Path
) -> None:
    model = jaxedit.load_model(tiny[name])
    out = jaxedit.save_flax(model, tmp_path / "saved")
    written = msgpack_restore((out / "flax_model.msgpack").read_bytes())
    chex.assert_trees_all_equal(written, flax_layout(tiny[name]))
    assert json.loads((out / "config.json").read_text())["model_type"] == model.config.family
    again = jaxedit.load_model(out)
    assert again.config == model.config
    chex.assert_trees_all_equal(again.params, model.params)
    # bare params with their config: the same bytes
    bare = jaxedit.save_flax(model.params, tmp_path / "bare", config=model.config)
    assert (bare / "flax_model.msgpack").read_bytes() == (out / "flax_model.msgpack").read_bytes()


def test_sharded_flax_checkpoint_with_index(tiny, tmp_path: Path) -> None:
    tree = flax_layout(tiny["gpt2"])["transformer"]
    target = tmp_path / "sharded"
    target.mkdir()
    shutil.copy(tiny["gpt2"] / "config.json", target / "config.json")
    shards = ({"transformer": {k: v for k, v in tree.items() if k != "h"}}, {"transformer": {"h": tree["h"]}})
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"flax_model-0000{i}-of-00002.msgpack"
        (target / file).write_bytes(msgpack_serialize(shard))
        weight_map.update(dict.fromkeys(flatten_dict(shard, sep="/"), file))
    (target / "flax_model.msgpack.index.json").write_text(json.dumps({"weight_map": weight_map}))
    chex.assert_trees_all_equal(jaxedit.load_model(target).params, jaxedit.load_model(tiny["gpt2"]).params)


def _one_line_error(directory: Path) -> str:
    with pytest.raises(WeightsError) as caught:
        jaxedit.load_model(directory)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_unknown_missing_and_clashing_flax_keys_are_refused(tiny, tmp_path: Path) -> None:
    tree = flax_layout(tiny["gpt2"])
    extra = flax_layout(tiny["gpt2"])
    extra["transformer"]["h"]["0"]["attn"]["extra"] = {"kernel": np.zeros((4, 4), np.float32)}
    message = _one_line_error(flax_dir(tiny["gpt2"], extra, tmp_path / "extra"))
    assert "not used by the gpt2 layout" in message and "transformer.h.0.attn.extra.weight" in message

    missing = flax_layout(tiny["gpt2"])
    del missing["transformer"]["h"]["1"]["mlp"]["c_fc"]["kernel"]
    message = _one_line_error(flax_dir(tiny["gpt2"], missing, tmp_path / "missing"))
    assert "'transformer.h.1.mlp.c_fc.weight' is missing" in message

    tree["transformer"]["ln_f"]["weight"] = tree["transformer"]["ln_f"]["scale"]
    message = _one_line_error(flax_dir(tiny["gpt2"], tree, tmp_path / "clash"))
    assert "'transformer/ln_f/scale' and 'transformer/ln_f/weight' both read as" in message

    broken = flax_dir(tiny["gpt2"], flax_layout(tiny["gpt2"]), tmp_path / "truncated")
    (broken / "flax_model.msgpack").write_bytes((broken / "flax_model.msgpack").read_bytes()[:-100])
    assert "cannot read flax_model.msgpack" in _one_line_error(broken)


def test_save_flax_refuses_foreign_files_and_families_without_a_flax_class(tiny, tmp_path: Path) -> None:
    model = jaxedit.load_model(tiny["gpt2"])
    target = tmp_path / "saved"
    target.mkdir()
    (target / "flax_model.msgpack").write_bytes(b"not mine")
    with pytest.raises(FilesError, match=r"flax_model\.msgpack, not written by jaxedit"):
        jaxedit.save_flax(model, target)
    assert (target / "flax_model.msgpack").read_bytes() == b"not mine"
    jaxedit.save_flax(model, target, overwrite=True)
    chex.assert_trees_all_equal(jaxedit.load_model(target).params, model.params)
    jaxedit.save_flax(model, target)  # jaxedit's own file now: replaced without overwrite

    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"someone's")
    with pytest.raises(FilesError, match=r"model\.safetensors, which a loader could read instead"):
        jaxedit.save_flax(model, other, overwrite=True)
    assert sorted(p.name for p in other.iterdir()) == ["model.safetensors"]

    with pytest.raises(FilesError, match="is the folder"):
        jaxedit.save_flax(model, tiny["gpt2"])
    with pytest.raises(InputError, match="no Flax class for gpt_neox"):
        jaxedit.save_flax(jaxedit.load_model(tiny["neox_sequential"]), tmp_path / "neox")
    with pytest.raises(InputError, match="needs its config="):
        jaxedit.save_flax(model.params, tmp_path / "bare")
    assert not (tmp_path / "neox").exists() and not (tmp_path / "bare").exists()
