"""Metric building blocks (docs/methods.md §0, §12): teacher-forced target probabilities, n-gram entropy, Score."""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.core import tokens as tok
from jaxedit.core.decoder import logits_at
from jaxedit.edit.gate import adaptor_of
from jaxedit.errors import InputError
from jaxedit.io.loading import Model


@jax.jit
def _scores(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    logp = jax.nn.log_softmax(logits, axis=-1)  # [R, M, V]
    picked = jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    return picked, jnp.argmax(logp, axis=-1)


def target_scores(
    model: Model, pairs: Sequence[tuple[str, str]], batch_size: int = 32
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """For each `(prompt, target)`: the mean NLL of the target tokens (teacher forced; the target gets a
    leading space), and per target token whether it is the top-1 prediction and what the top-1 is.

    Returns `(mean_nll [P], correct: list of [n_tokens] bool, argmax: list of [n_tokens] int)`.
    On a model with iReVa adaptors each answer token is scored on its own input `prompt ⊕ target[:j]`
    (the adaptor acts at an input's last token); on other models that equals the single teacher-forced
    pass, which is what runs.
    `P(o | p) = exp(-mean_nll)` is the length-normalised probability of docs/methods.md §0.
    """
    from jaxedit.edit.targets import target_ids

    per_prefix = adaptor_of(model.params) is not None
    rows, reads, labels, owner = [], [], [], []
    for index, (prompt, target) in enumerate(pairs):
        ids = tok.encode_one(model.tokenizer, prompt)
        targets = target_ids(model, target)
        if per_prefix:  # the adaptor acts at each input's last token: one input per prefix (iReVa §5.4)
            for j, label in enumerate(targets):
                rows.append(ids + targets[:j])
                reads.append([len(ids) - 1 + j])
                labels.append([label])
                owner.append(index)
        else:
            rows.append(ids + targets[:-1])
            reads.append([len(ids) - 1 + j for j in range(len(targets))])
            labels.append(targets)
            owner.append(index)
    picked_rows: list[np.ndarray] = [np.zeros(0)] * len(rows)
    top_rows: list[np.ndarray] = [np.zeros(0, np.int64)] * len(rows)
    order = sorted(
        range(len(rows)), key=lambda r: len(rows[r])
    )  # similar lengths share a batch: less padding
    for start in range(0, len(order), batch_size):
        members = order[start : start + batch_size]
        bucket = min(batch_size, 1 << (len(members) - 1).bit_length())  # few batch shapes: few compilations
        chunk = [rows[r] for r in members] + [rows[members[-1]]] * (bucket - len(members))
        ids, mask = tok.pad(chunk, tok.pad_id(model.tokenizer), side="right", multiple=16)
        width = tok.power_of_two(max(len(reads[r]) for r in members))  # few read widths: few programs
        read = np.zeros((ids.shape[0], width), np.int32)
        label = np.zeros((ids.shape[0], width), np.int32)
        for i, r in enumerate(members):
            read[i, : len(reads[r])] = reads[r]
            label[i, : len(labels[r])] = labels[r]
        logits = logits_at(model.params, model.config, ids, mask, read)
        picked, top = (np.asarray(a) for a in _scores(logits, jnp.asarray(label)))
        for i, r in enumerate(members):
            picked_rows[r] = picked[i, : len(labels[r])]
            top_rows[r] = top[i, : len(labels[r])]
    groups: list[list[int]] = [[] for _ in pairs]
    for r, index in enumerate(owner):
        groups[index].append(r)
    nll = np.zeros(len(pairs))
    correct: list[np.ndarray] = []
    argmax: list[np.ndarray] = []
    for index, mine in enumerate(groups):
        lab = np.concatenate([labels[r] for r in mine])
        nll[index] = -np.concatenate([picked_rows[r] for r in mine]).mean()
        top = np.concatenate([top_rows[r] for r in mine])
        correct.append(top == lab)
        argmax.append(top)
    return nll, correct, argmax


def ngram_entropy(text: str, n: int) -> float:
    """Entropy (bits) of the word n-gram frequency distribution of `text`."""
    words = text.split()
    grams = collections.Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    if total == 0:
        return 0.0
    return -sum(c / total * math.log2(c / total) for c in grams.values())


def generation_entropy(texts: Sequence[str]) -> float:
    """Fluency: `(2/3 · H2 + 4/3 · H3) / 2` of word bi- and tri-grams, averaged over texts (docs/methods.md §12)."""
    if not texts:
        raise InputError("no generated texts to score")
    return float(np.mean([(2 / 3 * ngram_entropy(t, 2) + 4 / 3 * ngram_entropy(t, 3)) / 2 for t in texts]))


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean (Score of ROME / MEMIT / PMET); 0 when any value is 0."""
    values = [float(v) for v in values]
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)
