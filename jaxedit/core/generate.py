"""Batched generation with a key/value cache: greedy or top-k sampling, one jitted program.

The cache holds `P + N` positions (P padded prompt length, N new tokens) so every step has static
shapes: the prompt is run once (prefill) and each new token is one cached step inside `lax.scan`.
Prompts are left-padded; positions count real tokens only, so a padded prompt continues exactly as it
would alone.

An `MLPExtra` in the params (iReVa's adaptors, `jaxedit.edit.gate`) acts on the last token of each step's input: the prompt's last token
in the prefill, then each new token. Cached states of earlier tokens keep what the adaptor added when
they were last; re-running the whole prefix at each step (the paper's per-prefix evaluation, which
`jaxedit.evaluate.metrics.target_scores` does for adaptor models) would not apply it there.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.core import decoder
from jaxedit.core import tokens as tok
from jaxedit.core.config import ModelConfig
from jaxedit.core.layout import Params
from jaxedit.core.model import Model
from jaxedit.core.row_deltas import RowDeltas
from jaxedit.errors import InputError

KVCache = tuple[jax.Array, jax.Array]  # ([L, B, S, K, E], [L, B, S, K, E])


def cached_step(
    params: Params,
    config: ModelConfig,
    input_ids: jax.Array,
    positions: jax.Array,
    mask: jax.Array,
    cache: KVCache,
    index: jax.Array,
    row_deltas: RowDeltas | None = None,
) -> tuple[jax.Array, KVCache]:
    """Run `input_ids` `[B, T]` written at cache slots `index..index+T-1`.

    Args:
      positions: `[B, T]` position ids of the new tokens.
      mask: `[B, T, S]` which cache slots each new token may attend to.
      row_deltas: per-row MLP output edits (each row as its own edited model would run), or None.

    Returns:
      Logits of the last new token `[B, V]` and the updated cache.
    """
    x = decoder.residual_input(config, params, decoder.embed_tokens(params, input_ids), positions)
    rotary = decoder.rotary_for(config, positions)

    last = jnp.full((x.shape[0],), x.shape[1] - 1, jnp.int32)  # prompts are left-padded

    def step(carry: tuple[jax.Array, KVCache], layer: tuple[Params, jax.Array]) -> tuple[tuple, None]:
        x, cache = carry
        p, layer_index = layer
        extra = decoder.mlp_extra_at(params, layer_index, last)  # acts on the last token of each step's input
        delta = None if row_deltas is None else row_deltas.at_layer(layer_index)
        out = decoder.block(
            config, p, x, rotary, mask, {}, (), cache, index, mlp_extra=extra, cache_layer=layer_index,
            mlp_delta=delta,
        )  # fmt: skip
        return (out.resid, out.cache), None

    # the whole cache rides in the carry and each layer writes its new keys / values into it in place
    # (as scanned inputs and outputs, every step would copy the whole cache: twice the step's time at
    # batch 128 on a CPU)
    (x, cache), _ = jax.lax.scan(step, (x, cache), (params["layers"], jnp.arange(config.n_layers)))
    return decoder.unembed(config, params, x[:, -1]), cache


def _choose(
    logits: jax.Array,
    rng: jax.Array,
    top_k: int | None,
    temperature: float,
    group_sizes: tuple[int, ...],
    noise_rows: jax.Array,
) -> jax.Array:
    """Greedy, or a Gumbel-max draw among the top `k` (what `jax.random.categorical` does). The noise of a
    group of `n` rows is `gumbel(rng, (n, k))`, as if that group were the whole batch; row `r` reads row
    `noise_rows[r]` of the groups' noise stacked in `group_sizes` order."""
    if top_k is None:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    values, indices = jax.lax.top_k(logits / temperature, top_k)  # [B, k]
    noise = jnp.concatenate([jax.random.gumbel(rng, (n, top_k), values.dtype) for n in group_sizes])
    picked = jnp.argmax(values + noise[noise_rows], axis=-1)  # [B]
    return jnp.take_along_axis(indices, picked[:, None], axis=-1)[:, 0].astype(jnp.int32)


def _group_noise_rows(groups: Sequence[int] | None, rows: int) -> tuple[tuple[int, ...], np.ndarray]:
    """Distinct group sizes and each row's index into their stacked noise (see `_choose`)."""
    if groups is None:
        return (rows,), np.arange(rows, dtype=np.int32)
    groups = [int(n) for n in groups]
    if any(n < 1 for n in groups) or sum(groups) != rows:
        raise InputError(f"groups must be positive sizes summing to the {rows} rows, got {groups}")
    sizes = tuple(sorted(set(groups)))
    offsets = dict(zip(sizes, np.cumsum((0, *sizes[:-1])).tolist(), strict=True))
    noise_rows = np.concatenate([offsets[n] + np.arange(n) for n in groups]).astype(np.int32)
    return sizes, noise_rows


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "top_k", "eos_id", "group_sizes"))
def _generate(
    params: Params,
    config: ModelConfig,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    rng: jax.Array,
    temperature: jax.Array,
    noise_rows: jax.Array,
    max_new_tokens: int,
    top_k: int | None,
    eos_id: int | None,
    group_sizes: tuple[int, ...],
    row_deltas: RowDeltas | None,
) -> jax.Array:
    b, p = input_ids.shape
    s = p + max_new_tokens
    c = config
    dtype = params["embed"]["tokens"].dtype
    cache = tuple(jnp.zeros((c.n_layers, b, s, c.n_kv_heads, c.head_dim), dtype) for _ in range(2))
    valid = jnp.concatenate([attention_mask.astype(bool), jnp.zeros((b, max_new_tokens), bool)], axis=1)
    slots = jnp.arange(s)
    prefill_mask = valid[:, None, :] & (slots[None, None, :] <= jnp.arange(p)[None, :, None])  # [B, P, S]
    positions = decoder.positions_from_mask(attention_mask)
    logits, cache = cached_step(
        params, config, input_ids, positions, prefill_mask, cache, jnp.int32(0), row_deltas
    )
    rng, sub = jax.random.split(rng)
    first = _choose(logits, sub, top_k, temperature, group_sizes, noise_rows)
    lengths = attention_mask.astype(jnp.int32).sum(-1)

    def step(carry: tuple, i: jax.Array) -> tuple[tuple, jax.Array]:
        token, cache, valid, done, rng = carry
        index = p + i
        valid = valid.at[:, index].set(True)
        mask = valid[:, None, :] & (slots[None, None, :] <= index)  # [B, 1, S]
        logits, cache = cached_step(
            params, config, token[:, None], (lengths + i)[:, None], mask, cache, index, row_deltas
        )
        rng, sub = jax.random.split(rng)
        nxt = _choose(logits, sub, top_k, temperature, group_sizes, noise_rows)
        if eos_id is not None:
            done = done | (token == eos_id)
            nxt = jnp.where(done, eos_id, nxt)
        return (nxt, cache, valid, done, rng), nxt

    done = jnp.zeros((b,), bool)
    _, rest = jax.lax.scan(step, (first, cache, valid, done, rng), jnp.arange(max_new_tokens - 1))
    return jnp.concatenate([first[:, None], rest.T], axis=1)  # [B, N]


def generate(
    params: Params,
    config: ModelConfig,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    max_new_tokens: int = 20,
    top_k: int | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    eos_id: int | None = None,
    groups: Sequence[int] | None = None,
    row_deltas: RowDeltas | None = None,
) -> np.ndarray:
    """New token ids `[B, max_new_tokens]` continuing left-padded prompts.

    Greedy when `top_k` is None, else samples from the `top_k` most likely tokens at `temperature`.
    After `eos_id` a row repeats `eos_id`. `groups` (sizes of consecutive row groups, summing to B) makes
    each group draw the random numbers it would draw generated alone with the same `seed`, so one call on
    many groups returns what a call per group would (the batched CounterFact scoring relies on it).
    `row_deltas` runs each row as its own edited model (`jaxedit.core.row_deltas`; `rows` of length B).
    """
    input_ids = np.asarray(input_ids)
    decoder.check_tokens(config, input_ids)
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if input_ids.shape[1] + max_new_tokens > config.max_positions:
        raise InputError(
            f"prompt of {input_ids.shape[1]} tokens plus {max_new_tokens} new tokens exceeds the model's "
            f"context of {config.max_positions} tokens"
        )
    if top_k is not None and not 1 <= top_k <= config.vocab_size:
        raise InputError(f"top_k must lie in [1, {config.vocab_size}], got {top_k}")
    if attention_mask is None:
        attention_mask = np.ones_like(input_ids)
    group_sizes, noise_rows = _group_noise_rows(groups, input_ids.shape[0])
    if row_deltas is not None and row_deltas.rows.shape != (input_ids.shape[0],):
        raise InputError(
            f"row_deltas name the model of {row_deltas.rows.shape[0]} rows for {input_ids.shape[0]} prompts"
        )
    out = _generate(
        params,
        config,
        jnp.asarray(input_ids, jnp.int32),
        jnp.asarray(attention_mask, jnp.int32),
        jax.random.key(seed),
        jnp.float32(temperature),
        jnp.asarray(noise_rows),
        max_new_tokens,
        top_k,
        eos_id,
        group_sizes,
        row_deltas,
    )
    return np.asarray(out)


def generate_text(
    model: Model,
    prompts: Sequence[str] | str,
    *,
    max_new_tokens: int = 20,
    top_k: int | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    groups: Sequence[int] | None = None,
    row_deltas: RowDeltas | None = None,
) -> list[str]:
    """Completions (without the prompt) of one or more prompts, stopping at the model's EOS token;
    `groups` and `row_deltas` (one row per prompt) as in `generate`."""
    if model.tokenizer is None:
        raise InputError(f"model {model.source!r} has no tokenizer; use generate() on token ids")
    rows = [tok.encode_one(model.tokenizer, p) for p in ([prompts] if isinstance(prompts, str) else prompts)]
    # left padding to a multiple of 8 tokens: prompts of nearby lengths share one compiled program
    length = tok.bucket(max(len(r) for r in rows), 8, model.config.max_positions - max_new_tokens)
    ids, mask = tok.pad(rows, tok.pad_id(model.tokenizer), length=length)
    eos = model.tokenizer.eos_token_id
    out = generate(
        model.params, model.config, ids, mask, max_new_tokens=max_new_tokens, top_k=top_k,
        temperature=temperature, seed=seed, eos_id=eos, groups=groups, row_deltas=row_deltas,
    )  # fmt: skip
    texts = []
    for row in out:
        row = list(row)
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        texts.append(model.tokenizer.decode(row))
    return texts
