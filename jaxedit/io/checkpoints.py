"""Reading tensors from checkpoints: safetensors (single or sharded), PyTorch `.bin`, Flax msgpack, GGUF.

A `TensorSource` answers `names()` and `get(name)` one tensor at a time, so converting a checkpoint
never needs two copies of it in host memory (a Flax msgpack file, which has no index, is held whole
once). Every failure to read raises `WeightsError` naming the file and what went wrong.

Every source names its tensors the way transformers' PyTorch classes do
(`transformer.h.0.attn.c_attn.weight`), so one name table per family (`jaxedit.io.families`) serves
every format.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jaxedit.errors import InputError


class WeightsError(InputError):
    """A checkpoint that is missing, truncated, unreadable or does not match its config."""


class TensorSource:
    """Named tensors read lazily from one or more files."""

    def __init__(self, readers: dict[str, Callable[[], np.ndarray]], origin: str):
        self._readers = readers
        self.origin = origin

    def names(self) -> set[str]:
        return set(self._readers)

    def get(self, name: str) -> np.ndarray:
        try:
            return self._readers[name]()
        except KeyError:
            raise WeightsError(f"{self.origin}: tensor {name!r} is missing") from None
        except WeightsError:
            raise
        except Exception as err:  # corrupted data inside a readable header
            raise WeightsError(f"{self.origin}: cannot read tensor {name!r}: {err}") from err


def _to_numpy(tensor: object) -> np.ndarray:
    """numpy float32 (or integer) view of a torch or numpy tensor; bfloat16 is widened."""
    if hasattr(tensor, "detach"):  # a torch tensor
        import torch

        t = tensor.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.numpy()
    return np.asarray(tensor)


def safetensors_source(files: Iterable[Path], origin: str) -> TensorSource:
    """Lazy reader over safetensors files (headers are read now, data on `get`)."""
    from safetensors import safe_open

    readers: dict[str, Callable[[], np.ndarray]] = {}
    for path in files:
        if not path.exists():
            raise WeightsError(f"{origin}: weights file {path.name} is missing")
        try:
            with safe_open(str(path), framework="numpy") as handle:
                names = list(handle.keys())
        except Exception as err:
            raise WeightsError(
                f"{origin}: cannot read {path.name} (truncated or not safetensors): {err}"
            ) from err
        size = path.stat().st_size

        def read(name: str, path: Path = path, size: int = size) -> np.ndarray:
            if path.stat().st_size != size:
                raise WeightsError(f"{origin}: {path.name} changed while loading")
            try:
                with safe_open(str(path), framework="numpy") as handle:
                    return handle.get_tensor(name)
            except TypeError:  # bfloat16 has no numpy dtype in some safetensors builds
                with safe_open(str(path), framework="pt") as handle:
                    return _to_numpy(handle.get_tensor(name))

        for name in names:
            readers[name] = lambda name=name, read=read: read(name)
    return TensorSource(readers, origin)


def torch_bin_source(path: Path, origin: str) -> TensorSource:
    """Reader over a PyTorch `pytorch_model.bin` (needs torch; loaded with `weights_only=True`)."""
    try:
        import torch
    except ImportError as err:
        raise WeightsError(
            f"{origin}: {path.name} is a PyTorch checkpoint; install torch to read it"
        ) from err
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(
            f"{origin}: cannot read {path.name} (truncated or not a checkpoint): {err}"
        ) from err
    return TensorSource({name: (lambda t=t: _to_numpy(t)) for name, t in state.items()}, origin)


FLAX_WEIGHTS = "flax_model.msgpack"
FLAX_INDEX = "flax_model.msgpack.index.json"


def flax_leaves(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """`(path, leaf)` for every leaf of a nested dict (a restored Flax params tree), depth first."""
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, dict):
            yield from flax_leaves(value, path)
        else:
            yield path, value


def torch_style_name(path: tuple[str, ...], array: np.ndarray) -> tuple[str, bool]:
    """The PyTorch name of a Flax param and whether its array is the transpose of the PyTorch tensor.

    The rule of transformers' Flax <-> PyTorch conversion: a 2-D `kernel` (an `nn.Dense`, or GPT-2's
    `FlaxConv1D`, which keeps `[out, in]`) is the transposed `weight`; an `embedding` (`nn.Embed`) and a
    `scale` (`nn.LayerNorm`) are the `weight` as is; anything else (`bias`, the `weight` of Llama's
    RMSNorm) keeps its name. Other kernels (convolutions) keep `kernel`, which no family table uses.
    """
    *module, leaf = path
    if leaf == "kernel" and array.ndim == 2:
        return ".".join((*module, "weight")), True
    if leaf in ("embedding", "scale"):
        return ".".join((*module, "weight")), False
    return ".".join(path), False


def flax_msgpack_source(files: Iterable[Path], origin: str) -> TensorSource:
    """Reader over Flax `flax_model.msgpack` files (one, or the shards of an index), under PyTorch names.

    A msgpack file has no index of its tensors, so each file is read whole now (`flax.serialization.
    msgpack_restore`); `get` then hands out views of it. Names follow `torch_style_name`; two Flax keys
    that would read as one name raise `WeightsError`.
    """
    from flax.serialization import msgpack_restore

    readers: dict[str, Callable[[], np.ndarray]] = {}
    keys: dict[str, str] = {}
    for path in files:
        if not path.exists():
            raise WeightsError(f"{origin}: weights file {path.name} is missing")
        try:
            tree = msgpack_restore(path.read_bytes())
        except Exception as err:
            raise WeightsError(
                f"{origin}: cannot read {path.name} (truncated or not a Flax msgpack checkpoint): {err}"
            ) from err
        if not isinstance(tree, dict):
            raise WeightsError(f"{origin}: {path.name} holds no dict of parameters")
        for key, leaf in flax_leaves(tree):
            flax_key = "/".join(key)
            if not isinstance(leaf, np.ndarray):
                raise WeightsError(f"{origin}: Flax key {flax_key!r} in {path.name} is not an array")
            name, transposed = torch_style_name(key, leaf)
            if name in keys:
                raise WeightsError(
                    f"{origin}: Flax keys {keys[name]!r} and {flax_key!r} both read as tensor {name!r}"
                )
            keys[name] = flax_key
            readers[name] = (lambda a=leaf: a.T) if transposed else (lambda a=leaf: a)
    return TensorSource(readers, origin)


def _flax_index_files(index: Path, origin: str) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise WeightsError(f"{origin}: unreadable {index.name}: {err}") from err
    return sorted({index.parent / name for name in weight_map.values()})


def directory_source(directory: Path) -> TensorSource:
    """The weights of a Hugging Face model directory, in the order transformers prefers them: safetensors,
    then PyTorch `.bin`, then Flax msgpack (sharded with an index, or one `flax_model.msgpack`)."""
    origin = str(directory)
    index = directory / "model.safetensors.index.json"
    single = directory / "model.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise WeightsError(f"{origin}: unreadable {index.name}: {err}") from err
        files = sorted({directory / name for name in weight_map.values()})
        return safetensors_source(files, origin)
    if single.exists():
        return safetensors_source([single], origin)
    bins = sorted(directory.glob("pytorch_model*.bin"))
    if len(bins) == 1:
        return torch_bin_source(bins[0], origin)
    if len(bins) > 1:
        sources = [torch_bin_source(b, origin) for b in bins]
        readers = {}
        for source in sources:
            readers.update({n: (lambda n=n, s=source: s.get(n)) for n in source.names()})
        return TensorSource(readers, origin)
    if (directory / FLAX_INDEX).exists():
        return flax_msgpack_source(_flax_index_files(directory / FLAX_INDEX, origin), origin)
    if (directory / FLAX_WEIGHTS).exists():
        return flax_msgpack_source([directory / FLAX_WEIGHTS], str(directory / FLAX_WEIGHTS))
    raise WeightsError(
        f"{origin}: no weights found (looked for model.safetensors, model.safetensors.index.json, "
        f"pytorch_model.bin, {FLAX_WEIGHTS} and {FLAX_INDEX})"
    )
