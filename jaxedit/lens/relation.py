"""Relation-focused lens analyses at the last relation token (Liu et al. 2024 §4.2; docs/methods.md §2).

- Attribute rate: `AR[l] = |top50(lens(h[l])) ∩ A(r)| / 50` at the last token of the prompt, with `A(r)`
  the decoded tokens of relation r's 200 attributes (`rets/relation_related_attributes.json`), each
  attribute tokenized with a leading space and every sub-token added; a hit is an exact match.
- Target rank flow: per layer, the lens rank of the predicted object's first token (the model's final
  top-1) and of one random token; the Spearman correlation of the mean `-rank` of the object with the
  mean AR across layers; the share of facts whose object token is among the relation's attributes.
- Sublayer blocking: the MLP (or attention) update at the last token is zeroed for a window of layers;
  the drop of AR at the final layer, per blocked window.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from jaxedit.data.records import read_records
from jaxedit.errors import InputError
from jaxedit.io.loading import Model
from jaxedit.lens.core import lens_readout


@dataclasses.dataclass(frozen=True)
class LensFact:
    """A prompt ending at the relation's last token, its relation id, and (optionally) the true object."""

    prompt: str
    relation: str
    object: str | None = None


def read_lens_facts(path: str | Path | Any) -> list[LensFact]:
    """Facts from `known_1000.json`-style records (`prompt`, `relation_id`, `attribute`), from any source
    `jaxedit.data.read_records` takes."""
    records = read_records(path)
    return [LensFact(r["prompt"], r["relation_id"], r.get("attribute")) for r in records]


def read_attributes(path: str | Path) -> dict[str, list[str]]:
    """`{relation id: [attribute strings]}` (`relation_related_attributes.json`)."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise InputError(f"{path} must map relation ids to attribute lists")
    return data


def attribute_tokens(tokenizer: Any, attributes: Sequence[str]) -> frozenset[str]:
    """`A(r)`: every decoded sub-token of every attribute tokenized with a leading space."""
    out: set[str] = set()
    for attribute in attributes:
        for token in tokenizer(" " + attribute.strip(), add_special_tokens=False)["input_ids"]:
            out.add(tokenizer.decode([token]))
    return frozenset(out)


def _check(facts: Sequence[LensFact], attributes: dict[str, list[str]]) -> None:
    if not facts:
        raise InputError("no facts to analyse")
    missing = sorted({f.relation for f in facts} - set(attributes))
    if missing:
        raise InputError(
            f"no attributes for relation ids {', '.join(missing)} (known: {', '.join(sorted(attributes))})"
        )


def _rates(
    model: Model, top: np.ndarray, facts: Sequence[LensFact], tokens: dict[str, frozenset[str]]
) -> np.ndarray:
    """`[n, L]` attribute rates of top-k id arrays `[n, L, k]`."""
    decoded: dict[int, str] = {}
    rates = np.zeros(top.shape[:2])
    for i, fact in enumerate(facts):
        wanted = tokens[fact.relation]
        for layer in range(top.shape[1]):
            ids = top[i, layer]
            hits = 0
            for t in ids:
                t = int(t)
                if t not in decoded:
                    decoded[t] = model.tokenizer.decode([t])
                hits += decoded[t] in wanted
            rates[i, layer] = hits / len(ids)
    return rates


def attribute_rate(
    model: Model,
    facts: Sequence[LensFact],
    attributes: dict[str, list[str]],
    *,
    k: int = 50,
    seed: int = 0,
    batch: int = 32,
) -> dict[str, Any]:
    """Attribute rate and target rank flow per layer at the last relation token (see module doc).

    Returns per-layer means (`attribute_rate`, `object_rank`, `random_rank`), their per-fact arrays
    (`per_fact_rate` `[n, L]`), the Spearman `rho` of `-object_rank` with `attribute_rate` across layers,
    and `objects_included`, the share of facts whose predicted object token is one of `A(r)`.
    """
    _check(facts, attributes)
    tokens = {r: attribute_tokens(model.tokenizer, attributes[r]) for r in {f.relation for f in facts}}
    rng = np.random.default_rng(seed)
    prompts = [f.prompt for f in facts]
    first = lens_readout(model, prompts, k=1, batch=batch)  # the predicted object: the final top-1
    random_ids = rng.integers(0, model.config.vocab_size, size=len(facts))
    watch = np.stack([first.final, random_ids], axis=1)
    readout = lens_readout(model, prompts, watch=watch, k=k, batch=batch)
    rates = _rates(model, readout.top["resid_post"], facts, tokens)
    object_rank = readout.ranks[:, :, 0].mean(0)
    random_rank = readout.ranks[:, :, 1].mean(0)
    rho = float(spearmanr(-object_rank, rates.mean(0)).statistic)
    included = float(
        np.mean(
            [
                model.tokenizer.decode([int(t)]) in tokens[f.relation]
                for t, f in zip(first.final, facts, strict=True)
            ]
        )
    )
    return {
        "layers": model.config.n_layers, "facts": len(facts), "k": k,
        "attribute_rate": rates.mean(0).tolist(), "object_rank": object_rank.tolist(),
        "random_rank": random_rank.tolist(), "rho": rho, "objects_included": included,
        "per_fact_rate": rates,
    }  # fmt: skip


def sublayer_blocking(
    model: Model,
    facts: Sequence[LensFact],
    attributes: dict[str, list[str]],
    *,
    window: int | None = None,
    sublayers: Sequence[str] = ("mlp", "attn"),
    k: int = 50,
    batch: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """The drop of the final layer's attribute rate when the MLP or attention update at the last token is
    zeroed for layers `[l, l + window)`, for every start layer l (Liu et al. 2024 Fig. 2b). `window` defaults
    to 10 layers of GPT-2 XL's 48, scaled to the model's depth."""
    _check(facts, attributes)
    n_layers = model.config.n_layers
    window = max(1, round(10 / 48 * n_layers)) if window is None else window
    if not 1 <= window <= n_layers:
        raise InputError(f"window must lie in [1, {n_layers}], got {window}")
    tokens = {r: attribute_tokens(model.tokenizer, attributes[r]) for r in {f.relation for f in facts}}
    prompts = [f.prompt for f in facts]
    base = _rates(model, lens_readout(model, prompts, k=k, batch=batch).top["resid_post"], facts, tokens)[
        :, -1
    ]
    out: dict[str, Any] = {"window": window, "facts": len(facts), "final_rate": float(base.mean())}
    jobs = [(s, start) for s in sublayers for start in range(n_layers)]
    drops: dict[str, list[float]] = {s: [] for s in sublayers}
    for sublayer, start in tqdm(jobs, desc="sublayer blocking", disable=not progress):
        if sublayer not in ("mlp", "attn"):
            raise InputError(f"sublayers are 'mlp' and 'attn', got {sublayer!r}")
        layers = range(start, min(start + window, n_layers))
        readout = lens_readout(
            model, prompts, k=k, batch=batch, blocked_layers=layers, blocked_site=f"{sublayer}_out"
        )
        rate = _rates(model, readout.top["resid_post"], facts, tokens)[:, -1]
        drops[sublayer].append(float((base - rate).mean()))
    out["drop"] = drops
    return out
