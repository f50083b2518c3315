"""Withdrawal of iReVa edits (docs/methods.md §9, iReVa 2024 §6.2): Retrieve Success and Consistency.

After all facts are edited, each fact is withdrawn on its own (its neurons muted, or removed from the gate
as the paper does: `jaxedit.edit.adaptors.WITHDRAWAL_MODES`) and its edit
question is asked again as zsRE scores it (the answer's prefixes teacher forced), so a fact's output is
the sequence of top-1 tokens at its answer positions. iReVa 2024 defines both metrics per example:

- RS = mean_i 1[f_edited(x_i) ≠ f_withdrawn(x_i)]: the fact's output changes (the edit switches off);
- Con = mean_i 1[f_unedited(x_i) = f_withdrawn(x_i)]: the unedited output comes back whole.

Also reported, stricter: `RS_token` / `Con_token`, the same comparisons per answer token (means over a
fact's tokens, then over facts), and `changed`, the share of facts whose edited output differs from the
unedited one at all. A fact the unedited model already answered is not changed by its edit, so
withdrawing it cannot change the output either: `changed` bounds RS, and the unedited model's share of
correct answer tokens caps `RS_token` in the same way. All ×100.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jaxedit.edit.adaptors import neuron_facts, switch_off
from jaxedit.edit.gate import adaptor_of, with_adaptor
from jaxedit.errors import InputError, NotAppliedError
from jaxedit.evaluate.metrics import target_scores
from jaxedit.io.loading import Model


def withdrawal_metrics(
    edited: Model,
    base: Model,
    pairs: Sequence[tuple[str, str]],
    facts: Sequence[str],
    *,
    mode: str = "mute",
    progress: bool = True,
) -> dict[str, Any]:
    """RS and Con (×100, per example and per token) of withdrawing each fact of `edited` on its pair, in
    withdrawal `mode` (`mute` or `remove`)."""
    if len(pairs) != len(facts):
        raise InputError(f"{len(pairs)} questions for {len(facts)} facts")
    adaptor = adaptor_of(edited.params)
    if adaptor is None:
        raise InputError("the edited model has no adaptor neurons to withdraw")
    slots: dict[str, list[int]] = {}
    for slot, (fact, _) in enumerate(neuron_facts(edited)):
        slots.setdefault(fact, []).append(slot)
    missing = [f for f in facts if f not in slots]
    if missing:
        raise NotAppliedError(f"facts not in the edited model: {', '.join(missing[:10])}")
    _, _, edited_top = target_scores(edited, pairs)
    _, _, base_top = target_scores(base, pairs)
    rows: dict[str, list[float]] = {k: [] for k in ("RS", "Con", "RS_token", "Con_token", "changed")}
    for index, fact in enumerate(tqdm(facts, desc="withdrawal", disable=not progress)):
        off = switch_off(adaptor, slots[fact], mode)
        withdrawn = edited.replace(params=with_adaptor(edited.params, off))
        _, _, (top,) = target_scores(withdrawn, [pairs[index]])
        differs, same = top != edited_top[index], top == base_top[index]
        rows["RS"].append(float(differs.any()))
        rows["Con"].append(float(same.all()))
        rows["RS_token"].append(float(differs.mean()))
        rows["Con_token"].append(float(same.mean()))
        rows["changed"].append(float((edited_top[index] != base_top[index]).any()))
    return {**{k: round(100 * float(np.mean(v)), 2) for k, v in rows.items()}, "n": len(facts)}
