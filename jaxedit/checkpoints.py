"""Reading tensors from checkpoint files: safetensors (single or sharded), PyTorch `.bin`, GGUF.

A `TensorSource` answers `names()` and `get(name)` one tensor at a time, so converting a checkpoint
never needs two copies of it in host memory. Every failure to read raises `WeightsError` naming the
file and what went wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

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


def directory_source(directory: Path) -> TensorSource:
    """The weights of a Hugging Face model directory, in the order transformers prefers them."""
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
    raise WeightsError(
        f"{origin}: no weights found (looked for model.safetensors, model.safetensors.index.json and "
        "pytorch_model.bin)"
    )
