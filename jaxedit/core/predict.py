"""Next-token readouts: the top-k continuations of prompts with their probabilities."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from jaxedit.core import tokens as tok
from jaxedit.core.decoder import forward
from jaxedit.core.model import Model
from jaxedit.errors import InputError


@dataclasses.dataclass(frozen=True)
class NextTokens:
    """Top-k next tokens of one prompt: decoded strings, ids and softmax probabilities."""

    prompt: str
    tokens: tuple[str, ...]
    ids: tuple[int, ...]
    probs: tuple[float, ...]


def next_tokens(model: Model, prompts: Sequence[str], k: int = 5) -> list[NextTokens]:
    """One batched forward over left-padded prompts, read at the last position."""
    if model.tokenizer is None:
        raise InputError(f"model {model.source!r} has no tokenizer")
    ids, mask = tok.encode(model.tokenizer, prompts)
    logits = forward(model.params, model.config, ids, mask).logits[:, -1]
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    out = []
    for prompt, row in zip(prompts, probs, strict=True):
        top = np.argsort(-row)[:k]
        out.append(
            NextTokens(
                prompt=prompt,
                tokens=tuple(model.tokenizer.decode([int(i)]) for i in top),
                ids=tuple(int(i) for i in top),
                probs=tuple(float(row[i]) for i in top),
            )
        )
    return out
