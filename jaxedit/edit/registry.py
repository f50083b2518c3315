"""One registry of the editing methods: `make_editor(method, model, ...)` reads the method's settings,
computes its key statistics and context templates once, and returns an `Editor` to call on request after
request (or batch after batch). The CLI, the evaluation runner's callers and the experiments build their
editors here, so a method is wired to its statistics, layers and templates in one place.

Methods: ROME (Meng et al., 2022), FT / FT-L (Zhu et al., 2020; constrained fine-tuning as in ROME §4),
RETS without its subject constraint (the constraint needs training prompts: `jaxedit.edit.rets`), MEMIT
(Meng et al., 2023), PMET (Li et al., 2024), AlphaEdit (Fang et al., 2025), and iReVa (2024, cited from an anonymous review copy;
`ireva-init`: its initialised neurons without retrofitting).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxedit.core.model import Model
from jaxedit.edit.alphaedit import alphaedit
from jaxedit.edit.alphaedit import default_hparams as alphaedit_hparams
from jaxedit.edit.contexts import context_templates
from jaxedit.edit.easyedit import read_easyedit_hparams
from jaxedit.edit.finetune import FT, FT_L, finetune
from jaxedit.edit.ireva import default_hparams as ireva_hparams
from jaxedit.edit.ireva import ireva
from jaxedit.edit.memit import default_hparams as mass_hparams
from jaxedit.edit.memit import memit
from jaxedit.edit.requests import Request
from jaxedit.edit.rets import default_hparams as rets_hparams
from jaxedit.edit.rets import rets
from jaxedit.edit.rome import default_hparams as rome_hparams
from jaxedit.edit.rome import default_layer, rome
from jaxedit.edit.stats import KeyStats, corpus_or_samples, key_statistics
from jaxedit.errors import InputError

SINGLE = ("rome", "ft", "ft-l", "rets")  # one request per call
BATCHED = ("memit", "pmet", "alphaedit", "ireva", "ireva-init")  # a list of requests per call
METHODS = SINGLE + BATCHED


@dataclasses.dataclass(frozen=True)
class Statistics:
    """Where key statistics come from: a corpus (a path, folder, dataset or cached name that
    `jaxedit.data.corpus.open_corpus` reads; streamed) or, when None, text sampled from the model."""

    corpus: str | None = None
    samples: int = 500
    max_len: int = 128

    def record(self) -> dict[str, Any]:
        """The source as a run records it."""
        return {"corpus": self.corpus, "samples": self.samples, "max_len": self.max_len}

    def compute(self, model: Model, layers: Sequence[int], site: str = "mlp_key") -> dict[int, KeyStats]:
        """`E[k kᵀ]` of `layers` at `site` (cached by `key_statistics`)."""
        if self.corpus is not None:
            return key_statistics(
                model, list(layers), corpus=self.corpus, samples=self.samples, max_len=self.max_len, site=site
            )
        texts, corpus_id = corpus_or_samples(model, None, self.samples)
        return key_statistics(
            model,
            list(layers),
            texts,
            samples=self.samples,
            corpus_id=corpus_id,
            max_len=self.max_len,
            site=site,
        )


@dataclasses.dataclass(frozen=True)
class Editor:
    """A prepared method: `editor(model, request)` (or `editor(model, [requests])` when `batched`) gives
    its edit (a `Delta`, or an `AdaptorEdit` for iReVa); `settings` are what a run records."""

    method: str
    batched: bool
    settings: Mapping[str, Any]
    edit: Callable[[Model, Any], Any] = dataclasses.field(repr=False)

    def __call__(self, model: Model, requests: Request | Sequence[Request]) -> Any:
        return self.edit(model, requests)


def method_hparams(
    method: str,
    model: Model,
    hparams: Any = None,
    *,
    layer: int | None = None,
    layers: Sequence[int] | None = None,
) -> Any:
    """The settings `method` runs with: the packaged file for this model, a JSON file of yours, or an
    hparams value (`RomeHparams`, `MemitHparams`, ...), with `layer` (single-layer methods) or `layers`
    (MEMIT, PMET, AlphaEdit) replaced when given. EasyEdit YAML files: `make_editor`."""
    if method not in METHODS:
        raise InputError(f"unknown editing method {method!r}; choose from {', '.join(METHODS)}")
    path = hparams if isinstance(hparams, str | Path) else None
    given = None if path is not None else hparams
    if method in ("ft", "ft-l"):
        hp = given or (FT if method == "ft" else FT_L)
        chosen = layer if layer is not None else hp.layer
        return dataclasses.replace(hp, layer=default_layer(model) if chosen is None else chosen)
    if method in ("memit", "pmet", "alphaedit"):
        hp = given or (
            alphaedit_hparams(model, path) if method == "alphaedit" else mass_hparams(model, method, path)
        )
        return dataclasses.replace(hp, layers=tuple(layers)) if layers else hp
    if method in ("ireva", "ireva-init"):
        hp = dataclasses.replace(given or ireva_hparams(model, path), retrofit=method == "ireva")
    else:
        hp = given or (rets_hparams(model, path) if method == "rets" else rome_hparams(model, path))
    return hp if layer is None else dataclasses.replace(hp, layer=layer)


def make_editor(
    method: str,
    model: Model,
    hparams: Any = None,
    statistics: Statistics = Statistics(),
    *,
    layer: int | None = None,
    layers: Sequence[int] | None = None,
) -> Editor:
    """`method` prepared for `model`: settings (`method_hparams`, or an EasyEdit YAML file), key statistics
    from `statistics` and context templates, computed once. Raises `InputError` for an unknown method or
    an EasyEdit file of another method."""
    easyedit = None
    if isinstance(hparams, str | Path) and str(hparams).endswith((".yaml", ".yml")):  # EasyEdit's file
        easyedit = read_easyedit_hparams(hparams, model)
        if easyedit.method != method:
            raise InputError(
                f"{hparams} is EasyEdit's {easyedit.method.upper()} file; run with --method {easyedit.method}"
            )
        hparams = easyedit.hparams
    hp = method_hparams(method, model, hparams, layer=layer, layers=layers)
    settings: dict[str, Any] = {"hparams": dataclasses.asdict(hp)}
    if method in ("ireva", "ireva-init"):
        return Editor(method, True, settings, lambda m, requests: ireva(m, _as_list(requests), hp))
    if method in ("ft", "ft-l"):
        return Editor(method, False, settings, lambda m, request: finetune(m, request, hp))
    settings["statistics"] = statistics.record()
    templates = context_templates(model, hp.prefixes)
    if method in ("memit", "pmet", "alphaedit"):
        return _mass_editor(method, model, hp, statistics, templates, settings)
    if easyedit is not None and easyedit.identity_statistics:  # ROME with mom2_adjustment: false (C = I)
        stats, settings["statistics"] = easyedit.statistics(model), {"identity": True}
    else:
        stats = statistics.compute(model, [hp.layer])[hp.layer]
    if method == "rets":
        return Editor(
            method, False, settings, lambda m, request: rets(m, request, stats, hp, templates=templates)
        )
    return Editor(
        method, False, settings, lambda m, request: rome(m, request, stats, hp, templates=templates)
    )


def _mass_editor(
    method: str, model: Model, hp: Any, statistics: Statistics, templates: Sequence[str], settings: dict
) -> Editor:
    stats = statistics.compute(model, hp.layers)
    if method == "alphaedit":
        return Editor(
            method, True, settings, lambda m, requests: alphaedit(m, requests, stats, hp, templates=templates)
        )
    attn = statistics.compute(model, hp.layers, "attn_heads") if hp.update_attn else None  # PMET's ablation

    def edit(m: Model, requests: Sequence[Request]) -> Any:
        return memit(m, _as_list(requests), stats, hp, templates=templates, attn_stats=attn)

    return Editor(method, True, settings, edit)


def _as_list(requests: Request | Sequence[Request]) -> list:
    return list(requests) if isinstance(requests, list | tuple) else [requests]
