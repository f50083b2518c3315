"""Tokenization: prompts to padded `[B, T]` id and mask arrays, and token-level helpers.

Padding is on the left by default so the last position of every row is the last prompt token (what
next-token readouts and generation use); `forward` gives the same per-prompt logits either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from jaxedit.errors import InputError


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id, else 0 (padded positions are masked out anyway)."""
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            return int(value)
    return 0


def encode_one(tokenizer: Any, text: str) -> list[int]:
    """Token ids of one prompt, with the special tokens (BOS) the tokenizer itself adds."""
    if not isinstance(text, str) or not text:
        raise InputError(f"prompt must be a non-empty string, got {text!r}")
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def bucket(n: int, multiple: int, limit: int | None = None) -> int:
    """`n` rounded up to a multiple of `multiple` (shape buckets: nearby sizes share one compiled
    program), but never above `limit` when `n` itself fits under it."""
    rounded = -(-n // multiple) * multiple
    return n if limit is not None and rounded > limit >= n else rounded


def power_of_two(n: int) -> int:
    """The smallest power of two at least `n` (a shape bucket for small, varied sizes)."""
    return 1 << max(0, n - 1).bit_length()


def pad(
    rows: Sequence[Sequence[int]],
    pad_value: int,
    *,
    side: Literal["left", "right"] = "left",
    length: int | None = None,
    multiple: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Stack ragged id lists into `([B, T] int32 ids, [B, T] int32 mask)`.

    Args:
      rows: token id lists.
      pad_value: id written at padded positions.
      side: where padding goes.
      length: pad to this length (default: the longest row, rounded up to `multiple`).
      multiple: round the length up to a multiple of this, so nearby lengths share one compilation.
    """
    if not rows:
        raise InputError("nothing to pad: no rows")
    longest = max(len(r) for r in rows)
    if length is None:
        length = -(-longest // multiple) * multiple
    if longest > length:
        raise InputError(f"a row of {longest} tokens does not fit in length {length}")
    ids = np.full((len(rows), length), pad_value, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        n = len(row)
        sl = slice(length - n, length) if side == "left" else slice(0, n)
        ids[i, sl] = row
        mask[i, sl] = 1
    return ids, mask


def encode(
    tokenizer: Any,
    prompts: Sequence[str] | str,
    *,
    side: Literal["left", "right"] = "left",
    multiple: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize and pad prompts: `([B, T] ids, [B, T] mask)`."""
    if isinstance(prompts, str):
        prompts = [prompts]
    rows = [encode_one(tokenizer, p) for p in prompts]
    return pad(rows, pad_id(tokenizer), side=side, multiple=multiple)


def token_span(tokenizer: Any, prompt: str, substring: str, after: int = 0) -> tuple[int, int]:
    """Token indices `[start, end)` of the first occurrence of `substring` in the tokenized `prompt`
    at or after character `after`.

    Indices count every token the tokenizer produces for the prompt, BOS included (docs/methods.md §0).
    A token belongs to the span when its characters overlap the substring's characters.

    Raises:
      ValueError: the substring is empty or not in the prompt (the message names both).
    """
    if not substring:
        raise InputError(f"empty subject for prompt {prompt!r}")
    start_char = prompt.find(substring, after)
    if start_char < 0:
        raise InputError(f"subject {substring!r} does not occur in prompt {prompt!r}")
    end_char = start_char + len(substring)
    enc = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
    inside = [
        i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end_char and b > start_char
    ]
    if not inside:
        raise InputError(f"subject {substring!r} maps to no token of prompt {prompt!r}")
    return inside[0], inside[-1] + 1


def special_positions(tokenizer: Any, ids: Sequence[int]) -> list[bool]:
    """True at positions holding special tokens (BOS/EOS/pad) of the tokenizer."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return [int(i) in special for i in ids]
