"""Measurements along a sequence of edits (lifelong editing; Fang et al., 2025, AlphaEdit §4): the
edits made so far judged together, and the model's general ability, with no network.

- CounterFact (ROME's metrics, docs/methods.md §12): efficacy ES, generalization PS, specificity NS and the
  generation entropy (fluency) of the cases edited so far, on the model holding all of them.
- zsRE: token accuracy on the question (ES), its rephrase (PS) and the locality question (NS).
- General ability: the perplexity of held-out English text (passages the key statistics never read,
  e.g. WikiText-2's test split), and the accuracy on `known_1000` facts the unedited model got right
  (all answer tokens top-1; 100 before any edit by construction).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxedit.edit.requests import Request
from jaxedit.edit.targets import target_ids
from jaxedit.errors import InputError
from jaxedit.evaluate.counterfact import CounterfactCase, score_cases, summarise
from jaxedit.evaluate.metrics import target_scores
from jaxedit.evaluate.zsre import ZsreCase, score_zsre_cases, summarise_zsre
from jaxedit.io.loading import Model


def held_out_passages(
    path: str | Path, n: int = 64, words: int = 64, prompt_words: int = 8
) -> list[tuple[str, str]]:
    """`n` `(prompt, continuation)` pairs from a plain-text file (WikiText-2 raw layout: one paragraph
    per line, ` = Heading = ` lines skipped): the first `words` words of each paragraph that long,
    the first `prompt_words` of them as the prompt."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"held-out text {path} is not a file")
    passages = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.startswith("=") or len(text.split()) < words:
            continue
        split = text.split()[:words]
        passages.append((" ".join(split[:prompt_words]), " ".join(split[prompt_words:])))
        if len(passages) == n:
            break
    if not passages:
        raise InputError(f"{path} holds no paragraph of {words} words")
    return passages


def perplexity(model: Model, passages: Sequence[tuple[str, str]]) -> float:
    """`exp` of the mean NLL per continuation token over `passages` (teacher forced, each continuation
    after its prompt)."""
    nll, _, _ = target_scores(model, list(passages), batch_size=16)
    counts = np.asarray([len(target_ids(model, c)) for _, c in passages], np.float64)
    return float(np.exp(np.sum(nll * counts) / counts.sum()))


def known_facts(model: Model, records: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """`(prompt, attribute)` of the `known_1000`-style records whose every answer token is the model's
    top-1 prediction."""
    pairs = [(r["prompt"], r["attribute"]) for r in records]
    if not pairs:
        raise InputError("no facts given")
    _, correct, _ = target_scores(model, pairs)
    return [pair for pair, ok in zip(pairs, correct, strict=True) if bool(np.all(ok))]


def fact_accuracy(model: Model, pairs: Sequence[tuple[str, str]]) -> float:
    """Percentage of `(prompt, answer)` pairs whose every answer token is the top-1 prediction."""
    if not pairs:
        raise InputError("no facts given")
    _, correct, _ = target_scores(model, list(pairs))
    return round(100 * float(np.mean([np.all(c) for c in correct])), 2)


class LifelongProbe:
    """A `jaxedit.edit.sequential` probe: after each measured batch, the summaries of the edited cases
    so far (CounterFact and / or zsRE, matched to the edits by their requests) and the general-ability
    figures. `fluency_cases` bounds the cases whose generations are sampled (evenly spread over the
    edits so far; generation dominates the probe's time)."""

    def __init__(
        self,
        *,
        counterfact: Sequence[CounterfactCase] = (),
        zsre: Sequence[ZsreCase] = (),
        passages: Sequence[tuple[str, str]] = (),
        known: Sequence[tuple[str, str]] = (),
        generation_tokens: int = 50,
        fluency_cases: int = 32,
    ) -> None:
        self.counterfact = {c.request: c for c in counterfact}
        self.zsre = {c.request: c for c in zsre}
        self.passages = list(passages)
        self.known = list(known)
        self.generation_tokens = generation_tokens
        self.fluency_cases = fluency_cases

    def __call__(self, model: Model, edited: Sequence[Request], batches: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        cf = [self.counterfact[r] for r in edited if r in self.counterfact]
        if cf:
            sample = min(self.fluency_cases, len(cf)) if self.generation_tokens else 0
            picked = set(np.linspace(0, len(cf) - 1, sample).astype(int).tolist()) if sample else set()
            rest = [c for i, c in enumerate(cf) if i not in picked]
            rows = score_cases(model, rest, generation_tokens=0) if rest else []
            if picked:  # fluency (generations) only on the sampled cases; each case scored once
                sampled = [cf[i] for i in sorted(picked)]
                rows += score_cases(model, sampled, generation_tokens=self.generation_tokens)
            out["counterfact"] = summarise(rows)
        zs = [self.zsre[r] for r in edited if r in self.zsre]
        if zs:
            out["zsre"] = summarise_zsre(score_zsre_cases(model, zs))
        if self.passages:
            out["perplexity"] = round(perplexity(model, self.passages), 3)
        if self.known:
            out["known_accuracy"] = fact_accuracy(model, self.known)
        return out
