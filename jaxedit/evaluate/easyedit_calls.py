"""EasyEdit's call shape and metric names on jaxedit's edits.

EasyEdit (Wang et al., 2024) edits with `editor.edit(prompts=..., ground_truth=..., target_new=...,
subject=..., rephrase_prompts=..., locality_inputs=..., portability_inputs=...)` and reports, before and
after each edit, `rewrite_acc`, `rephrase_acc`, `locality` and `portability`. `edit_like_easyedit` takes
the same arguments and an edit function of jaxedit's (`edit(model, request) -> Delta`), and returns the
same names under this protocol (EasyEdit's default, `sequential_edit=False`):

- each request is edited alone on the unedited model;
- `rewrite_acc`: teacher-forced top-1 accuracy of the `target_new` tokens after the prompt;
  `rephrase_acc` the same after the rephrased prompt; `portability/<name>_acc` the accuracy of each
  portability prompt's `ground_truth` tokens;
- `locality/<name>_acc`: the fraction of a locality prompt's `ground_truth` tokens whose top-1
  prediction (teacher forced) is the same after the edit as before it.

Targets are scored with a leading space (jaxedit's convention for every benchmark).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jaxedit.edit.delta import Delta, apply
from jaxedit.edit.targets import Request
from jaxedit.errors import InputError
from jaxedit.evaluate.metrics import target_scores
from jaxedit.loading import Model

PROTOCOL = (
    "EasyEdit names, sequential_edit=False: each request edited alone on the unedited model; "
    "rewrite / rephrase / portability: teacher-forced token top-1 accuracy; locality: share of the "
    "locality answer's tokens whose top-1 is unchanged by the edit"
)


def _as_list(name: str, value: Any, n: int) -> list:
    values = [value] if isinstance(value, str) else list(value)
    if len(values) != n:
        raise InputError(f"{name} has {len(values)} entries for {n} prompts")
    return values


def _inputs(name: str, inputs: Mapping | None, n: int) -> dict[str, tuple[list, list]]:
    """`{kind: {"prompt": [...], "ground_truth": [...]}}` checked, one entry per request."""
    out = {}
    for kind, fields in (inputs or {}).items():
        if not isinstance(fields, Mapping) or set(fields) != {"prompt", "ground_truth"}:
            raise InputError(f"{name}[{kind!r}] must hold exactly 'prompt' and 'ground_truth'")
        out[kind] = (
            _as_list(f"{name}[{kind!r}]['prompt']", fields["prompt"], n),
            _as_list(f"{name}[{kind!r}]['ground_truth']", fields["ground_truth"], n),
        )
    return out


def _request(prompt: str, subject: str, target: str) -> Request:
    if not subject.strip() or subject not in prompt:
        raise InputError(f"subject {subject!r} does not occur in prompt {prompt!r}")
    start = prompt.index(subject)
    return Request(
        prompt=prompt[:start] + "{}" + prompt[start + len(subject) :], subject=subject, target=target
    )


def _first_answer(value: Any) -> str:
    """EasyEdit lets an answer be a list of aliases: the first is scored."""
    return value if isinstance(value, str) else str(next(iter(value)))


def edit_like_easyedit(
    model: Model,
    edit: Callable[[Model, Request], Delta],
    *,
    prompts: str | Sequence[str],
    target_new: str | Sequence[str],
    subject: str | Sequence[str],
    ground_truth: str | Sequence[str] | None = None,
    rephrase_prompts: str | Sequence[str] | None = None,
    locality_inputs: Mapping | None = None,
    portability_inputs: Mapping | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Edit each request with `edit` and score it with EasyEdit's metric names (see the module docstring).

    Returns one dict per request: `case_id`, `requested_rewrite` (prompt, subject, target_new,
    ground_truth), `pre` and `post` (each `rewrite_acc`, `rephrase_acc` when given, `portability`),
    `post["locality"]`, and the `protocol`. Bad input raises before any edit.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    n = len(prompts)
    if n == 0:
        raise InputError("no prompts")
    targets = _as_list("target_new", target_new, n)
    subjects = _as_list("subject", subject, n)
    truths = _as_list("ground_truth", ground_truth, n) if ground_truth is not None else [None] * n
    rephrases = _as_list("rephrase_prompts", rephrase_prompts, n) if rephrase_prompts is not None else None
    locality = _inputs("locality_inputs", locality_inputs, n)
    portability = _inputs("portability_inputs", portability_inputs, n)
    requests = [_request(p, s, t) for p, s, t in zip(prompts, subjects, targets, strict=True)]

    def scored_pairs(i: int) -> list[tuple[str, str]]:
        pairs = [(prompts[i], targets[i])]
        if rephrases is not None:
            pairs.append((rephrases[i], targets[i]))
        pairs += [(p[i], _first_answer(g[i])) for p, g in portability.values()]
        pairs += [(p[i], _first_answer(g[i])) for p, g in locality.values()]
        return pairs

    def accuracies(correct: list[np.ndarray]) -> dict[str, Any]:
        out: dict[str, Any] = {"rewrite_acc": float(correct[0].mean())}
        if rephrases is not None:
            out["rephrase_acc"] = float(correct[1].mean())
        start = 1 + (rephrases is not None)
        kept = correct[start : start + len(portability)]
        out["portability"] = {f"{k}_acc": float(c.mean()) for k, c in zip(portability, kept, strict=True)}
        return out

    all_pairs = [scored_pairs(i) for i in range(n)]
    flat = [pair for pairs in all_pairs for pair in pairs]
    _, correct_pre, top_pre = target_scores(model, flat)  # the unedited model, all requests in one pass
    results = []
    offset = 0
    for i in tqdm(range(n), desc="edits", disable=not progress or n == 1):
        pairs = all_pairs[i]
        edited = apply(model, edit(model, requests[i]))
        _, correct_post, top_post = target_scores(edited, pairs)
        pre_correct = correct_pre[offset : offset + len(pairs)]
        pre_top = top_pre[offset : offset + len(pairs)]
        offset += len(pairs)
        local_start = len(pairs) - len(locality)
        post = accuracies(correct_post)
        post["locality"] = {
            f"{k}_acc": float(np.mean(top_post[local_start + j] == pre_top[local_start + j]))
            for j, k in enumerate(locality)
        }
        results.append({
            "case_id": i,
            "requested_rewrite": {"prompt": prompts[i], "subject": subjects[i], "target_new": targets[i],
                                  "ground_truth": truths[i]},
            "pre": accuracies(pre_correct), "post": post, "protocol": PROTOCOL,
        })  # fmt: skip
    return results
