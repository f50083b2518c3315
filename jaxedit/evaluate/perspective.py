"""Entity vs relation perspective probes (docs/methods.md §10, Wei et al. 2024 §4.3, Tables 1-2).

Wei et al. 2024 edits the same fact from the entity perspective (key at the last subject token) and from the
relation perspective (key at the last relation token) and measures Reliability (its eq. 6,
`1[f(x) = y*]`) and Generality (eq. 7, `1[f(x~) = f(x) = y*]` over rephrasings x~ of x) on two kinds of
probe, but does not publish the probes. jaxedit resolves the gap with probes built from public data,
each family holding one part of the fact fixed and varying the rest:

- **entity probes** (subject-anchored): the same subject with the relation worded differently, from the
  ParaRel patterns of the fact's relation (`[X] is located in [Y]`, `[X] can be found in [Y]`, ...),
  excluding the edit prompt's own wording. The first pattern in file order is `x` (Reliability), the
  others are its rephrasings (Generality).
- **relation probes** (relation-anchored): the edit prompt's exact relation wording about the same
  subject, alone (`x`, Reliability) and after held-out context prefixes (Generality; sampled with a
  seed other than the one the edit's target optimisation uses, so no probe is a training context).

A prediction `f(x) = y*` means every token of `y*` is the teacher-forced argmax (as in the zsRE token
metrics). The new object of each fact is the object of the next fact of the same relation in the set
(as CounterFact draws its counterfactual targets from the relation's other objects).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jaxedit.edit.delta import Delta
from jaxedit.edit.requests import Request
from jaxedit.errors import InputError
from jaxedit.evaluate.metrics import target_scores
from jaxedit.evaluate.report import Report
from jaxedit.evaluate.rspec import RelationPatterns, wording_key
from jaxedit.io.files import atomic_write_bytes
from jaxedit.io.loading import Model

METRICS = ("entity_reliability", "entity_generality", "relation_reliability", "relation_generality")


@dataclasses.dataclass(frozen=True)
class PerspectiveCase:
    """One fact, its counterfactual edit and both probe families (prompts end where the object goes)."""

    subject: str
    relation: str
    template: str  # the edit prompt with `{}` for the subject
    target_true: str
    target_new: str
    entity_probes: tuple[str, ...]
    relation_probes: tuple[str, ...]

    @property
    def request(self) -> Request:
        return Request(prompt=self.template, subject=self.subject, target=self.target_new)


def build_perspective_cases(
    facts: Iterable[Mapping[str, Any]],
    patterns: RelationPatterns,
    contexts: Sequence[str],
    n: int | None = None,
) -> list[PerspectiveCase]:
    """Cases from `known_1000.json`-style facts (`subject`, `template`, `attribute`, `relation_id`).

    Args:
      patterns: ParaRel patterns (`rspec.read_patterns`); a fact whose relation has fewer than two
        patterns other than its own wording is skipped.
      contexts: held-out context templates (`"<prefix>. {}"`); `"{}"` entries are ignored.
      n: stop after this many cases.

    Raises:
      ValueError: no fact yields a case.
    """
    facts = [dict(f) for f in facts]
    for fact in facts:
        missing = {"subject", "template", "attribute", "relation_id"} - set(fact)
        if missing:
            raise InputError(f"fact {fact!r} lacks {', '.join(sorted(missing))}")
    objects: dict[str, list[str]] = {}
    for fact in facts:
        objects.setdefault(fact["relation_id"], []).append(fact["attribute"].strip())
    held_out = [c for c in contexts if c != "{}"]
    if not held_out:
        raise InputError("no context templates other than '{}' for the relation probes' rephrasings")
    cases: list[PerspectiveCase] = []
    for fact in facts:
        if n is not None and len(cases) >= n:
            break
        relation, subject, true = fact["relation_id"], fact["subject"], fact["attribute"].strip()
        own = wording_key(fact["template"].replace("{}", "[X]"))
        wordings = [p for p in patterns.prompts_by_relation.get(relation, ()) if wording_key(p) != own]
        others = objects[relation]
        start = others.index(true)
        new = next((o for o in others[start + 1 :] + others[:start] if o != true), None)
        if len(wordings) < 2 or new is None:
            continue
        prompt = fact["template"].format(subject)
        cases.append(
            PerspectiveCase(
                subject=subject,
                relation=relation,
                template=fact["template"],
                target_true=true,
                target_new=new,
                entity_probes=tuple(w.replace("[X]", subject) for w in wordings),
                relation_probes=(prompt, *(c.format(prompt) for c in held_out)),
            )
        )
    if not cases:
        raise InputError("no fact has a relation with two ParaRel wordings and another object")
    return cases


def reliability_generality(correct: Sequence[bool]) -> tuple[float, float]:
    """Wei et al. 2024 eqs. 6-7 on one probe family: `correct[0]` is `f(x) = y*`, the rest `f(x~) = y*`."""
    if len(correct) < 2:
        raise InputError("a probe family needs x and at least one rephrasing")
    hit = bool(correct[0])
    return float(hit), float(np.mean([hit and bool(c) for c in correct[1:]]))


def score_perspectives(model: Model, case: PerspectiveCase, target: str | None = None) -> dict[str, float]:
    """Reliability and Generality (in %) on both probe families for `target` (default the new object)."""
    target = case.target_new if target is None else target
    prompts = [*case.entity_probes, *case.relation_probes]
    _, correct, _ = target_scores(model, [(p, target) for p in prompts])
    hits = [bool(c.all()) for c in correct]
    entity = reliability_generality(hits[: len(case.entity_probes)])
    relation = reliability_generality(hits[len(case.entity_probes) :])
    return dict(zip(METRICS, (100.0 * v for v in (*entity, *relation)), strict=True))


def evaluate_perspectives(
    model: Model,
    cases: Sequence[PerspectiveCase],
    editors: Mapping[str, Callable[[Model, Request], Delta]],
    *,
    out_dir: str | Path | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> Report:
    """Each method edits each case alone on the unedited model; means of `score_perspectives`.

    `out_dir` caches each (method, case) score as json (keyed by the case's content) in `out_dir/<method>/`,
    a folder claimed for the model's weights and `settings[method]` (`jaxedit.evaluate.runner.claim_directory`):
    an interrupted or longer run reuses them, another model or setting is refused. Returns
    `{"unedited": ..., "unedited (true object)": ..., method: ...}`, each with the four metrics and `n`.
    """
    from jaxedit.edit import apply
    from jaxedit.evaluate.runner import claim_directory, run_key

    if out_dir is not None:
        for name in editors:
            key = run_key(
                model, name, settings=(settings or {}).get(name), scoring={"benchmark": "perspective"}
            )
            claim_directory(Path(out_dir, name), key)

    def cached(name: str, case: PerspectiveCase, compute: Callable[[], dict[str, float]]) -> dict[str, float]:
        digest = hashlib.sha1(json.dumps(dataclasses.asdict(case)).encode()).hexdigest()[:16]
        path = Path(out_dir, name, f"{digest}.json") if out_dir is not None else None
        if path is not None and path.exists():
            return json.loads(path.read_text())
        scores = compute()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, json.dumps(scores).encode())
        return scores

    rows: dict[str, list[dict[str, float]]] = {
        "unedited": [score_perspectives(model, c) for c in cases],
        "unedited (true object)": [score_perspectives(model, c, c.target_true) for c in cases],
    }
    for name, editor in editors.items():
        rows[name] = [
            cached(
                name, case, lambda c=case, e=editor: score_perspectives(apply(model, e(model, c.request)), c)
            )
            for case in tqdm(cases, desc=f"{name} (entity vs relation)", disable=not progress)
        ]
    return Report(
        {
            name: {**{m: float(np.mean([r[m] for r in mine])) for m in METRICS}, "n": len(mine)}
            for name, mine in rows.items()
        }
    )
