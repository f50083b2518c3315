"""EasyEdit's hyperparameter files for ROME, MEMIT and PMET, read into jaxedit's settings.

EasyEdit (Wang et al., 2024, "EasyEdit: An Easy-to-use Knowledge Editing Framework for Large Language
Models") keeps one YAML file per method and model (`hparams/ROME/llama-7b.yaml`, ...), with the field
names of the ROME / MEMIT reference code (Meng et al., 2022; 2023). `read_easyedit_hparams` maps each
field to the jaxedit setting that does the same thing, and for every field it cannot honour it either
refuses the file (a value that would change the algorithm: another key token, a loss read below the last
layer, a layer selection other than "all", an unknown field) or warns (a value jaxedit applies
differently: half precision, the statistics' dataset and dtype, MEMIT's `mom2_adjustment`). Bookkeeping fields (paths, devices,
module name templates once checked to name the MLP output projection) have no counterpart and no effect.

    settings = read_easyedit_hparams("hparams/ROME/llama-7b.yaml", model)
    delta = rome(model, request, settings.statistics(model, stats), settings.hparams)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from jaxedit.edit.memit import MemitHparams, pmet_hparams
from jaxedit.edit.rome import RomeHparams
from jaxedit.edit.targets import TargetHparams
from jaxedit.errors import InputError

# fields with no counterpart and no effect here: where files live, devices, parallelism
BOOKKEEPING = frozenset({"alg_name", "model_name", "stats_dir", "device", "model_parallel", "ln_f_module",
                         "lm_head_module", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp"})  # fmt: skip
# the MLP output projection of each family jaxedit loads: what ROME / MEMIT / PMET rewrite
MLP_OUTPUT_PROJECTIONS = ("mlp.down_proj", "mlp.c_proj", "mlp.fc_out", "mlp.dense_4h_to_h")
KEY_TOKENS = {"subject_last": "subject", "last": "last"}
TARGET_FIELDS = {"v_num_grad_steps": "steps", "v_lr": "lr", "v_weight_decay": "weight_decay",
                 "clamp_norm_factor": "clamp", "kl_factor": "kl_factor"}  # fmt: skip
METHOD_FIELDS = {
    "rome": {"layers", "fact_token", "v_loss_layer", "mom2_adjustment", "context_template_length_params",
             "rewrite_module_tmp", "mom2_dataset", "mom2_n_samples", "mom2_dtype", "fp16", *TARGET_FIELDS},
    "memit": {"layers", "layer_selection", "fact_token", "v_loss_layer", "mom2_adjustment", "mom2_update_weight",
              "rewrite_module_tmp", "mom2_dataset", "mom2_n_samples", "mom2_dtype", "fp16", *TARGET_FIELDS},
}  # fmt: skip
METHOD_FIELDS["pmet"] = METHOD_FIELDS["memit"] | {"rewrite_module_tmps", "nll_loss_factor"}


@dataclasses.dataclass(frozen=True)
class EasyEditSettings:
    """What an EasyEdit file asks for, in jaxedit's terms.

    Attributes:
      method: "rome", "memit" or "pmet".
      hparams: `RomeHparams` or `MemitHparams`.
      statistics_samples: `mom2_n_samples` (texts for the key statistics), None when the file names none.
      identity_statistics: ROME with `mom2_adjustment: false` (the reference then solves without the
        key covariance: `C = I`); `statistics()` hands the identity to the solve.
    """

    method: str
    hparams: RomeHparams | MemitHparams
    statistics_samples: int | None
    identity_statistics: bool = False

    def statistics(self, model: Any, stats: Any = None) -> Any:
        """The statistics to pass to `rome` / `memit`: `stats`, or the identity the file asks for."""
        if self.identity_statistics:
            return np.eye(model.config.d_mlp, dtype=np.float32)
        if stats is None:
            raise InputError(f"{self.method} with mom2_adjustment needs key statistics (key_statistics(...))")
        return stats


def _load(source: str | Path | Mapping) -> tuple[dict[str, Any], str]:
    if isinstance(source, Mapping):
        return dict(source), "the given settings"
    path = Path(source)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InputError(
            f"cannot read EasyEdit hyperparameters from {path}: {str(err).splitlines()[0]}"
        ) from err
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a YAML mapping of EasyEdit fields")
    return data, str(path)


def _refuse(where: str, message: str) -> InputError:
    return InputError(f"{where}: {message}")


def read_easyedit_hparams(source: str | Path | Mapping, model: Any = None) -> EasyEditSettings:
    """Read an EasyEdit ROME / MEMIT / PMET file (a path to its YAML, or its fields as a mapping) into
    jaxedit's settings (see the module docstring). With `model`, `layers` and `v_loss_layer` are checked
    against its depth."""
    data, where = _load(source)
    method = str(data.get("alg_name", "")).lower()
    if method not in METHOD_FIELDS:
        raise _refuse(where, f"alg_name {data.get('alg_name')!r} is not one of ROME, MEMIT, PMET")
    unknown = sorted(set(data) - METHOD_FIELDS[method] - BOOKKEEPING)
    if unknown:
        raise _refuse(where, f"fields jaxedit cannot honour for {method.upper()}: {unknown}")
    n_layers = None if model is None else model.config.n_layers

    layers = data.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(x, int) and x >= 0 for x in layers):
        raise _refuse(where, f"layers must be a non-empty list of layer indices, got {layers!r}")
    if n_layers is not None and max(layers) >= n_layers:
        raise _refuse(where, f"layers {layers} do not fit a model of {n_layers} layers")
    if method == "rome" and len(layers) != 1:
        raise _refuse(where, f"ROME edits one layer, got layers {layers}")
    if data.get("layer_selection", "all") != "all":
        raise _refuse(where, f"layer_selection {data['layer_selection']!r}: only 'all' (every listed layer)")
    token = data.get("fact_token", "subject_last")
    if token not in KEY_TOKENS:
        raise _refuse(where, f"fact_token {token!r}: jaxedit reads keys at {sorted(KEY_TOKENS)}")
    loss_layer = data.get("v_loss_layer")
    if loss_layer is not None and n_layers is not None and loss_layer != n_layers - 1:
        raise _refuse(
            where, f"v_loss_layer {loss_layer}: jaxedit reads the loss at the output ({n_layers - 1})"
        )
    rewritten = [data["rewrite_module_tmp"]] if "rewrite_module_tmp" in data else []
    for name in [*rewritten, *data.get("rewrite_module_tmps", [])]:
        if not str(name).endswith(MLP_OUTPUT_PROJECTIONS):
            raise _refuse(
                where, f"rewrites {name!r}: jaxedit's {method.upper()} rewrites the MLP output projection"
            )
    if method == "pmet" and data.get("nll_loss_factor", 1) != 1:
        raise _refuse(
            where, f"nll_loss_factor {data['nll_loss_factor']}: jaxedit's PMET starts its NLL weight at 1"
        )

    if data.get("fp16"):
        warnings.warn(
            f"{where}: fp16 ignored: jaxedit computes edits in float32 (the model keeps its dtype)",
            stacklevel=2,
        )
    if data.get("mom2_dtype", "float32") != "float32":
        warnings.warn(
            f"{where}: mom2_dtype {data['mom2_dtype']!r} ignored: statistics accumulate in float32",
            stacklevel=2,
        )
    if data.get("mom2_dataset", "wikipedia") != "wikipedia":
        warnings.warn(
            f"{where}: mom2_dataset {data['mom2_dataset']!r}: statistics come from the corpus you pass",
            stacklevel=2,
        )
    if method != "rome" and data.get("mom2_adjustment") is False:
        warnings.warn(
            f"{where}: mom2_adjustment false ignored: {method.upper()}'s solve always uses the statistics",
            stacklevel=2,
        )

    changes = {name: data[field] for field, name in TARGET_FIELDS.items() if field in data}
    changes["key_token"] = KEY_TOKENS[token]
    samples = data.get("mom2_n_samples")
    if method == "rome":
        base = RomeHparams()
        prefixes = data.get("context_template_length_params")
        hp = RomeHparams(
            layer=layers[0], targets=dataclasses.replace(TargetHparams(), **changes),
            prefixes=base.prefixes if prefixes is None else tuple(tuple(p) for p in prefixes),
        )  # fmt: skip
        identity = data.get("mom2_adjustment") is False
        return EasyEditSettings("rome", hp, samples, identity_statistics=identity)
    base = pmet_hparams() if method == "pmet" else MemitHparams()
    hp = dataclasses.replace(
        base, layers=tuple(layers), targets=dataclasses.replace(base.targets, **changes),
        mom2_weight=float(data.get("mom2_update_weight", base.mom2_weight)),
    )  # fmt: skip
    return EasyEditSettings(method, hp, samples)
