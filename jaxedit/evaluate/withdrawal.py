"""Withdrawal of iReVa edits (METHODS.md §9, paper 001 §6.2): Retrieve Success and Consistency.

After all facts are edited, each fact is withdrawn on its own (its neurons switched off) and its edit
question is asked again, token by token as zsRE scores it (the answer's prefixes teacher forced):

- RS: the withdrawn model's top-1 differs from the edited model's (the edit switches off);
- Con: the withdrawn model's top-1 equals the unedited model's (the original answer comes back).

Both are means over the answer tokens of a fact, then over facts, ×100.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jaxedit.edit.adaptors import neuron_facts
from jaxedit.evaluate.metrics import target_scores
from jaxedit.loading import Model


def withdrawal_metrics(
    edited: Model,
    base: Model,
    pairs: Sequence[tuple[str, str]],
    facts: Sequence[str],
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """RS and Con (×100) of withdrawing each fact of `edited` on its `(question, answer)` pair."""
    if len(pairs) != len(facts):
        raise ValueError(f"{len(pairs)} questions for {len(facts)} facts")
    adaptor = edited.params.get("adaptor")
    if adaptor is None:
        raise ValueError("the edited model has no adaptor neurons to withdraw")
    slots: dict[str, list[int]] = {}
    for slot, (fact, _) in enumerate(neuron_facts(edited)):
        slots.setdefault(fact, []).append(slot)
    missing = [f for f in facts if f not in slots]
    if missing:
        raise KeyError(f"facts not in the edited model: {', '.join(missing[:10])}")
    _, _, edited_top = target_scores(edited, pairs)
    _, _, base_top = target_scores(base, pairs)
    retrieved, consistent = [], []
    for index, fact in enumerate(tqdm(facts, desc="withdrawal", disable=not progress)):
        off = adaptor.replace(active=adaptor.active.at[np.asarray(slots[fact])].set(False))
        withdrawn = edited.replace(params={**edited.params, "adaptor": off})
        _, _, (top,) = target_scores(withdrawn, [pairs[index]])
        retrieved.append(float(np.mean(top != edited_top[index])))
        consistent.append(float(np.mean(top == base_top[index])))
    return {
        "RS": round(100 * float(np.mean(retrieved)), 2),
        "Con": round(100 * float(np.mean(consistent)), 2),
        "n": len(facts),
    }
