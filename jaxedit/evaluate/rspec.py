"""R-Specificity (Liu et al. 2024 §5.1; docs/methods.md §12): does an edit of `(s, r, o → o*)` leave the subject's
other relations alone?

For each edited record, prompts about the same subject with a different relation `r2`, from
- T-REx facts `(s, r2, o2)` (`pararel/trex_lms_vocab/`) written with ParaRel patterns of `r2` whose object
  slot ends the sentence (`pararel/patterns/`), then (up to the limit) relations that T-REx subjects holding
  the edited relation commonly hold too (the same kind of subject), and
- `Relation_Specificity` locality prompts of KnowEdit-style files (`knowedit_wiki_counterfact/*.json`,
  `zsre/ZsRE-test-all.json`) about the same subject,
each answered by the unedited model's top-1 object-like next token `o2'` (`answer_prompts`). The edited relation is recognised by matching
the record's prompt (subject replaced by `[X]`) against the ParaRel patterns and `known_1000.json`
templates; a record whose relation is not recognised gets no prompts, and a candidate prompt is kept only
when its own relation is recognised and differs from every relation the record's prompt may express, so
the edited relation is never asked. The metric: on the edited model, `P(o2') > P(o*)` on each prompt
(length-normalised probabilities), averaged per record, ×100.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from jaxedit.core.predict import next_tokens
from jaxedit.data.records import RECORD_SUFFIXES, read_records
from jaxedit.evaluate.metrics import target_scores
from jaxedit.io.loading import Model


def wording_key(text: str) -> str:
    """A pattern or prompt prefix normalised for comparison (case, spacing, final period)."""
    return re.sub(r"\s+", " ", text.strip().lower().rstrip(" ."))


@dataclasses.dataclass(frozen=True)
class RelationPatterns:
    """Sentence prefixes ending where the object goes (`[X]` for the subject) and the relations each
    expresses, plus the patterns usable as prompts per relation."""

    relations_by_prefix: dict[str, frozenset[str]]
    prompts_by_relation: dict[str, tuple[str, ...]]

    def relations_of(self, prompt: str, subject: str) -> frozenset[str]:
        """The relations `prompt` (about `subject`) may express; empty when it matches no pattern."""
        if subject not in prompt:
            return frozenset()
        return self.relations_by_prefix.get(wording_key(prompt.replace(subject, "[X]", 1)), frozenset())


def relation_files(folder: Path) -> list[Path]:
    """ParaRel's per-relation files `P<id>.<ext>` in `folder`, in any format `read_records` reads."""
    return sorted(p for p in folder.glob("P*") if p.suffix.lower() in RECORD_SUFFIXES or p.is_dir())


def read_patterns(pararel_dir: str | Path, known: str | Path | None = None) -> RelationPatterns:
    """ParaRel patterns (`patterns/P*.jsonl`, or the same records as json / parquet / csv / arrow files or
    saved datasets) and optionally `known_1000.json` templates (`{}` subject)."""
    by_prefix: dict[str, set[str]] = {}
    prompts: dict[str, list[str]] = {}
    files = relation_files(Path(pararel_dir, "patterns"))
    if not files:
        raise FileNotFoundError(f"no ParaRel pattern files under {Path(pararel_dir, 'patterns')}")
    for path in files:
        relation = path.stem
        for record in read_records(path):
            pattern = record["pattern"]
            head, _, tail = pattern.partition("[Y]")
            if "[X]" not in head or tail.strip(" .") != "":
                continue  # the object must end the sentence and the subject come before it
            by_prefix.setdefault(wording_key(head), set()).add(relation)
            prompts.setdefault(relation, []).append(head.strip())
    if known is not None:
        for fact in read_records(known):
            by_prefix.setdefault(wording_key(fact["template"].replace("{}", "[X]")), set()).add(
                fact["relation_id"]
            )
    return RelationPatterns(
        {k: frozenset(v) for k, v in by_prefix.items()}, {k: tuple(v) for k, v in prompts.items()}
    )


def read_trex(pararel_dir: str | Path) -> dict[str, list[tuple[str, str]]]:
    """T-REx facts by subject: `subject -> [(relation, object)]`."""
    facts: dict[str, list[tuple[str, str]]] = {}
    for path in relation_files(Path(pararel_dir, "trex_lms_vocab")):
        for fact in read_records(path):
            facts.setdefault(fact["sub_label"], []).append((path.stem, fact["obj_label"]))
    return facts


def read_relation_specificity(files: Iterable[str | Path]) -> dict[str, list[str]]:
    """`Relation_Specificity` locality prompts of KnowEdit-style files, by subject."""
    prompts: dict[str, list[str]] = {}
    for path in files:
        for record in read_records(path):
            for item in (record.get("locality") or {}).get("Relation_Specificity", []):
                prompts.setdefault(record["subject"], []).append(item["prompt"])
    return prompts


_COOCCURRING: dict[tuple[int, frozenset[str]], tuple[dict, list[str]]] = {}  # holds `trex`: ids stay unique


def cooccurring(trex: dict[str, list[tuple[str, str]]], relations: frozenset[str]) -> list[str]:
    """Relations held by T-REx subjects that hold any of `relations`, most frequent first (those excluded)."""
    key = (id(trex), relations)
    if key not in _COOCCURRING:
        _COOCCURRING[key] = (trex, _count_cooccurring(trex, relations))
    return _COOCCURRING[key][1]


def _count_cooccurring(trex: dict[str, list[tuple[str, str]]], relations: frozenset[str]) -> list[str]:
    counts: dict[str, int] = {}
    for facts in trex.values():
        held = {r for r, _ in facts}
        if held & relations:
            for r in held - relations:
                counts[r] = counts.get(r, 0) + 1
    return sorted(counts, key=lambda r: (-counts[r], r))


@dataclasses.dataclass(frozen=True)
class RspecPrompt:
    prompt: str
    relation: str
    source: str


def candidate_prompts(
    subject: str,
    prompt: str,
    patterns: RelationPatterns,
    trex: dict[str, list[tuple[str, str]]],
    relation_specificity: dict[str, list[str]],
    limit: int = 5,
) -> list[RspecPrompt]:
    """Prompts about `subject` with a relation the edit prompt does not express (none if that relation is
    not recognised)."""
    edited = patterns.relations_of(prompt, subject)
    if not edited:
        return []

    def phrasing(relation: str) -> str | None:  # a pattern of `relation` no edited relation shares
        for pattern in patterns.prompts_by_relation.get(relation, ()):
            text = pattern.replace("[X]", subject)
            if not patterns.relations_of(text, subject) & edited:
                return text
        return None

    out: list[RspecPrompt] = []
    seen: set[str] = set()
    for relation, _ in trex.get(subject, []):
        if relation in edited or relation in seen:
            continue
        seen.add(relation)
        text = phrasing(relation)
        if text is not None:
            out.append(RspecPrompt(text, relation, "trex"))
    # then relations that T-REx subjects holding the edited relation commonly also hold (same kind of
    # subject: a person's birthplace and employer, a city's country), most common first
    for relation in cooccurring(trex, edited):
        if len(out) >= limit:
            break
        if relation not in seen:
            seen.add(relation)
            text = phrasing(relation)
            if text is not None:
                out.append(RspecPrompt(text, relation, "trex-cooccurring"))
    for text in relation_specificity.get(subject, []):
        relations = patterns.relations_of(text, subject)
        if relations and not relations & edited and text not in {p.prompt for p in out}:
            out.append(RspecPrompt(text, sorted(relations)[0], "relation_specificity"))
    return out[:limit]


FUNCTION_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "this",
        "that",
        "these",
        "those",
        "his",
        "her",
        "its",
        "their",
        "our",
        "my",
        "your",
        "one",
        "some",
        "any",
        "no",
        "not",
        "and",
        "or",
        "but",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "by",
        "with",
        "from",
        "as",
        "is",
        "was",
        "are",
        "were",
        "be",
        "been",
        "being",
        "it",
        "he",
        "she",
        "they",
        "we",
        "you",
        "i",
        "which",
        "who",
        "what",
        "there",
        "here",
        "also",
        "very",
        "more",
        "most",
        "than",
        "then",
    ]
)


def answer_prompts(model: Model, prompts: Sequence[str], k: int = 20) -> list[str | None]:
    """The unedited model's most likely object-like next token of each prompt: the top-ranked of its `k`
    most likely tokens that starts a word with a letter or digit and is not a function word ("the", "a",
    ...), which an instruction-tuned model often ranks first; None when there is none. Leading space kept."""
    out: list[str | None] = []
    for top in next_tokens(model, list(prompts), k=k) if prompts else []:
        words = [t for t in top.tokens if t.strip() and t.strip()[0].isalnum()]
        out.append(next((t for t in words if t.strip().lower() not in FUNCTION_WORDS), None))
    return out


def attach_rspec(
    model: Model,
    cases: Sequence,
    pararel_dir: str | Path,
    *,
    known: str | Path | None = None,
    relation_files: Iterable[str | Path] = (),
    limit: int = 5,
) -> list:
    """CounterFact cases with their R-Specificity `(prompt, o2')` pairs, answered by `model` (the unedited
    one) with `answer_prompts`; prompts without an object-like answer are dropped."""
    patterns = read_patterns(pararel_dir, known)
    trex = read_trex(pararel_dir)
    relation_specificity = read_relation_specificity(relation_files)
    out = []
    for case in cases:
        request = case.request
        found = candidate_prompts(request.subject, request.text, patterns, trex, relation_specificity, limit)
        answers = answer_prompts(model, [c.prompt for c in found])
        pairs = tuple((c.prompt, a) for c, a in zip(found, answers, strict=True) if a is not None)
        out.append(dataclasses.replace(case, rspec=pairs))
    return out


def rspec_targets(pairs: Sequence[tuple[str, str]], new: str) -> list[tuple[str, str]]:
    """The `(prompt, target)` rows `rspec_share` reads: `o2` then the new object, per pair."""
    return [(p, t) for p, o2 in pairs for t in (o2, new)]


def rspec_share(nll: np.ndarray) -> float:
    """Share of pairs where `P(o2) > P(new)`, from the mean NLLs of `rspec_targets`' rows."""
    prob = np.exp(-np.asarray(nll)).reshape(-1, 2)
    return float((prob[:, 0] > prob[:, 1]).mean())


def rspec_score(model: Model, pairs: Sequence[tuple[str, str]], new: str) -> float | None:
    """Share of `(prompt, o2)` pairs where `P(o2) > P(new)` on `model` (None without pairs)."""
    if not pairs:
        return None
    nll, _, _ = target_scores(model, rspec_targets(pairs, new))
    return rspec_share(nll)
