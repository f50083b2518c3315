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
from jaxedit.edit.requests import Request, as_request
from jaxedit.errors import InputError
from jaxedit.evaluate.metrics import target_scores
from jaxedit.io.loading import Model

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


def _several(value: Any) -> list:
    """One entry (a string) or several (a list) for one request."""
    return [value] if isinstance(value, str) else list(value)


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
    requests = [  # the subject written out in the prompt, as EasyEdit has it: as_request marks it
        as_request({"prompt": p, "subject": s, "target": t})
        for p, s, t in zip(prompts, subjects, targets, strict=True)
    ]

    def scored(i: int) -> list[tuple[str, str, str]]:
        """(group, prompt, answer) for request i: its rewrite, rephrase, portability and locality prompts
        (a kind may give a request several prompts, KnowEdit's layout)."""
        rows = [("rewrite", prompts[i], targets[i])]
        if rephrases is not None:
            rows += [("rephrase", p, targets[i]) for p in _several(rephrases[i])]
        for group, inputs in (("portability", portability), ("locality", locality)):
            for kind, (ps, gs) in inputs.items():
                mine, answers = _several(ps[i]), _several(gs[i])
                if len(mine) == 1 and len(answers) > 1:  # one prompt, its answer's aliases
                    answers = [answers]
                if len(mine) != len(answers):
                    raise InputError(
                        f"{group} {kind!r} of prompt {i}: {len(mine)} prompts, {len(answers)} answers"
                    )
                rows += [(f"{group}/{kind}", p, _first_answer(g)) for p, g in zip(mine, answers, strict=True)]
        return rows

    def mean_of(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    def summary(rows, correct, top=None, top_before=None) -> dict[str, Any]:
        """Per group: the mean over its prompts of the token accuracy (or, for locality after an edit,
        of the share of tokens whose top-1 is unchanged)."""
        by_group: dict[str, list[float]] = {}
        for r, (group, _, _) in enumerate(rows):
            if group.startswith("locality/"):
                if top is None:
                    continue
                value = float(np.mean(top[r] == top_before[r]))
            else:
                value = float(correct[r].mean())
            by_group.setdefault(group, []).append(value)
        out: dict[str, Any] = {"rewrite_acc": mean_of(by_group["rewrite"])}
        if rephrases is not None:
            out["rephrase_acc"] = mean_of(by_group.get("rephrase", []))
        out["portability"] = {f"{k}_acc": mean_of(by_group.get(f"portability/{k}", [])) for k in portability}
        if top is not None:
            out["locality"] = {f"{k}_acc": mean_of(by_group.get(f"locality/{k}", [])) for k in locality}
        return out

    all_rows = [scored(i) for i in range(n)]  # every check before any edit
    flat = [(p, a) for rows in all_rows for _, p, a in rows]
    _, correct_pre, top_pre = target_scores(model, flat)  # the unedited model, all requests in one pass
    results = []
    offset = 0
    for i in tqdm(range(n), desc="edits", disable=not progress or n == 1):
        rows = all_rows[i]
        edited = apply(model, edit(model, requests[i]))
        _, correct_post, top_post = target_scores(edited, [(p, a) for _, p, a in rows])
        pre_correct = correct_pre[offset : offset + len(rows)]
        pre_top = top_pre[offset : offset + len(rows)]
        offset += len(rows)
        results.append({
            "case_id": i,
            "requested_rewrite": {"prompt": prompts[i], "subject": subjects[i], "target_new": targets[i],
                                  "ground_truth": truths[i]},
            "pre": summary(rows, pre_correct), "post": summary(rows, correct_post, top_post, pre_top),
            "protocol": PROTOCOL,
        })  # fmt: skip
    return results


def knowedit_call(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`edit_like_easyedit`'s keyword arguments from KnowEdit records (Zhang et al., 2024, "A Comprehensive
    Study of Knowledge Editing for Large Language Models": `subject`, `prompt`, `target_new`,
    `ground_truth`, `portability` and `locality` as `{kind: [{"prompt", "ground_truth"}, ...]}`, and
    `rephrase` / `rephrase_prompt` where present). Every kind that occurs in any record is scored; a
    record without it scores none."""
    if not records:
        raise InputError("no KnowEdit records")
    for i, record in enumerate(records):
        missing = [k for k in ("subject", "prompt", "target_new") if k not in record]
        if missing:
            raise InputError(f"KnowEdit record {i} lacks {missing}")

    def inputs(field: str) -> dict[str, dict[str, list]]:
        kinds = sorted({kind for r in records for kind in (r.get(field) or {})})
        out = {}
        for kind in kinds:
            items = [list((r.get(field) or {}).get(kind) or []) for r in records]
            out[kind] = {"prompt": [[x["prompt"] for x in mine] for mine in items],
                         "ground_truth": [[x["ground_truth"] for x in mine] for mine in items]}  # fmt: skip
        return out

    call: dict[str, Any] = {
        "prompts": [r["prompt"] for r in records], "subject": [r["subject"] for r in records],
        "target_new": [r["target_new"] for r in records], "ground_truth": [r.get("ground_truth") for r in records],
        "portability_inputs": inputs("portability"), "locality_inputs": inputs("locality"),
    }  # fmt: skip
    rephrase = [r.get("rephrase", r.get("rephrase_prompt")) for r in records]
    if all(isinstance(x, str) for x in rephrase):
        call["rephrase_prompts"] = rephrase
    return call
