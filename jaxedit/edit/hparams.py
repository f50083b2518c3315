"""Hyperparameter files: one JSON per (method, family, depth) under `jaxedit/hparams/<method>/`.

`<family>-<n_layers>.json` (e.g. `rome/gpt2-48.json` for GPT-2 XL, `memit/gptj-28.json`) holds the
published settings of that model, or for SmolLM2 (`llama-30.json`) the ones this project chose, with a
`source` line saying where they come from. Users copy a file, change it and pass it with `--hparams`
(CLI) or `load_hparams(method, path)`. The files are the single source of the per-model defaults.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path
from typing import Any

from jaxedit.core.config import ModelConfig
from jaxedit.edit.targets import TargetHparams
from jaxedit.errors import InputError

METHODS = ("rome", "memit", "pmet", "ireva", "rets", "alphaedit")


def packaged_file(method: str, config: ModelConfig) -> Path | None:
    """The packaged file for this method and model shape, or None."""
    if method not in METHODS:
        raise InputError(f"no hyperparameter files for method {method!r}; methods are {', '.join(METHODS)}")
    path = Path(
        str(resources.files("jaxedit.hparams").joinpath(method, f"{config.family}-{config.n_layers}.json"))
    )
    return path if path.exists() else None


def read_hparams(path: str | Path) -> dict[str, Any]:
    """The settings of a hyperparameter file (its `source` note dropped)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read hyperparameters from {path}: {err}") from err
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object")
    data.pop("source", None)
    return data


def build(cls: type, data: dict[str, Any]) -> Any:
    """`cls(**data)` with `targets` as `TargetHparams`, lists as tuples, and unknown keys refused."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"unknown {cls.__name__} fields {unknown}; fields are {sorted(names)}")
    values = dict(data)
    if "targets" in values and isinstance(values["targets"], dict):
        values["targets"] = build(TargetHparams, values["targets"])
    for key in ("layers", "prefixes"):
        if isinstance(values.get(key), list):
            values[key] = tuple(tuple(v) if isinstance(v, list) else v for v in values[key])
    return cls(**values)
