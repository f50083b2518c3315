"""The compiled restore grid of causal tracing (METHODS.md §1), computing only what restoration changes.

A cell `(l, t)` of a grid restores, in the corrupted run, the clean hidden state `h[l]` at token t
(`hidden`), or the clean MLP / attention outputs at token t over a window of layers around l (`mlp`,
`attn`). The reference code runs one full forward pass per cell. Three facts of the problem make most of
that work unnecessary, and this engine skips it:

1. States below the first restored layer equal the corrupted run: a unit (cell x noise sample) starts
   from the cached corrupted residual stream at its first changed layer (`start`), not at the embedding.
2. Tokens before t never see the restoration (causal attention): only rows `t..T-1` of a unit are
   recomputed; the keys and values of rows before t come from the cached corrupted run.
3. Tokens before the first corrupted token are identical in the clean and corrupted runs, so restoring
   them changes nothing: those cells equal `P_corrupt` and are not run at all (only the last `live`
   rows of the prompt carry cells).

All units of a grid run in one jitted program. Units are sorted by start layer, so the units active at
layer j form a prefix of the unit list and every layer works on static shapes: a Python loop over layers
is unrolled at trace time into one XLA program per (kind, length bucket, live bucket, samples per chunk).
At each layer the rows to recompute are gathered into one flat batch (`items`) for the projections and
the MLP (the bulk of the FLOPs); attention runs per unit over the full prompt, with the recomputed keys
scattered over the cached corrupted ones. Noise samples are split into chunks run with `lax.map` to
bound memory.

Batch rows, for the record: every unit is a corrupted run (one noise sample) with one restoration; the
clean run and the plain corrupted runs happen once, before the grid, in `jaxedit.trace.runs`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import model as core
from jaxedit.config import ModelConfig
from jaxedit.layout import Params

Kind = Literal["hidden", "mlp", "attn"]
Sever = Literal["mlp", "attn", "both"] | None
KINDS: tuple[str, ...] = ("hidden", "mlp", "attn")


def window_bounds(layer: int, n_layers: int, window: int, convention: str = "code") -> tuple[int, int]:
    """Inclusive layer range restored around `layer` for the mlp / attn kinds (METHODS.md §1).

    `code` (reference implementation, default): `[l - w//2, l + ceil(w/2) - 1]`, i.e. `[l-5, l+4]` for
    w = 10; `paper` (the text): `[l - ceil(w/2) + 1, l + w//2]`, i.e. `[l-4, l+5]`. Clipped to the model.
    """
    if convention == "code":
        lo, hi = layer - window // 2, layer + (window + 1) // 2 - 1
    elif convention == "paper":
        lo, hi = layer - (window + 1) // 2 + 1, layer + window // 2
    else:
        raise ValueError(f"window_convention must be 'code' or 'paper', got {convention!r}")
    return max(0, lo), min(n_layers - 1, hi)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: build_plan caches one per key
class Plan:
    """Static schedule of one grid program (host numpy arrays, fixed by the key of `build_plan`).

    Every recomputed (unit, token row) pair is an *item*; items are stored flat, grouped by unit, and
    units are sorted by start layer, so the items recomputed at layer j are the prefix `[:items[j]]`.
    All data movement is by static gathers (no scatters, which are slow on CPU).

    Attributes:
      unit_layer / unit_token / unit_sample: the cell and the noise sample (within a chunk) of each unit.
      unit_start: first layer the unit recomputes (`n_layers` when nothing is left to compute).
      active[j] / items[j]: how many units / items are recomputed at layer j.
      item_unit / item_row: unit and token row of every item.
      key_index: `[U, T]` row of each unit's keys in `concat(cached keys [S*T], item keys)`.
      query_index: `[U, T]` row of each unit's queries in `concat(zero row, item queries)`.
      head_index: `[N]` row `unit * T + token` of each item in the per-unit attention output.
      last_item: `[U]` item holding each unit's last token.
      start_index / start_clean: `[N]` initial state of each item: row in the corrupted stream
        `[S, L+1, T]` flattened, and the clean-stream row `[L+1, T]` flattened, or -1.
      replace_attn[j] / replace_mlp[j]: `[N_j]` source row in `concat(clean [T], corrupted [S*T])` of
        items whose attention / MLP output is overwritten at layer j, -1 for the others.
    """

    kind: str
    n_layers: int
    length: int
    live: int
    samples: int
    unit_layer: np.ndarray
    unit_token: np.ndarray
    unit_sample: np.ndarray
    unit_start: np.ndarray
    active: tuple[int, ...]
    items: tuple[int, ...]
    item_unit: np.ndarray
    item_row: np.ndarray
    key_index: np.ndarray
    query_index: np.ndarray
    head_index: np.ndarray
    last_item: np.ndarray
    start_index: np.ndarray
    start_clean: np.ndarray
    replace_attn: tuple[np.ndarray, ...]
    replace_mlp: tuple[np.ndarray, ...]

    @property
    def n_units(self) -> int:
        return len(self.unit_layer)

    def recomputed_rows(self) -> int:
        """Token-layer rows the program recomputes (the work measure of the grid)."""
        return int(sum(self.items))


@functools.lru_cache(maxsize=64)
def build_plan(
    kind: str,
    n_layers: int,
    length: int,
    live: int,
    samples: int,
    window: int,
    convention: str,
    sever: str | None,
) -> Plan:
    """The static schedule for a grid over the last `live` of `length` token rows."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    t_len = length
    cells = []
    for layer in range(n_layers):
        for token in range(length - live, length):
            if kind == "hidden":
                start, bounds = layer + 1, (layer + 1, n_layers - 1)
            else:
                bounds = window_bounds(layer, n_layers, window, convention)
                start = bounds[0]
            cells.append((start, layer, token, bounds))
    cells.sort(key=lambda c: c[0])  # stable: units active at layer j form a prefix
    units = [
        (start, layer, token, s, bounds) for start, layer, token, bounds in cells for s in range(samples)
    ]
    n_units = len(units)
    unit_start = np.array([u[0] for u in units], np.int32)
    item_unit, item_row, first_item = [], [], []
    for index, (_, _, token, _, _) in enumerate(units):
        first_item.append(len(item_unit))
        item_unit += [index] * (t_len - token)
        item_row += list(range(token, t_len))
    first_item.append(len(item_unit))
    item_unit_a, item_row_a = np.asarray(item_unit, np.int32), np.asarray(item_row, np.int32)
    active = tuple(int((unit_start <= j).sum()) for j in range(n_layers))
    items = tuple(first_item[c] for c in active)

    key_index = np.zeros((n_units, t_len), np.int32)
    query_index = np.zeros((n_units, t_len), np.int32)
    for index, (_, _, token, s, _) in enumerate(units):
        rows = np.arange(t_len)
        mine = first_item[index] + rows - token  # item index of row p >= token
        key_index[index] = np.where(rows < token, s * t_len + rows, samples * t_len + mine)
        query_index[index] = np.where(rows < token, 0, 1 + mine)
    unit_sample_items = np.array([units[u][3] for u in item_unit], np.int32)
    unit_start_items = unit_start[item_unit_a]
    start_index = (unit_sample_items * (n_layers + 1) + unit_start_items) * t_len + item_row_a
    start_clean = np.full(len(item_unit), -1, np.int32)
    if kind == "hidden":
        firsts = np.asarray(first_item[:-1])
        start_clean[firsts] = unit_start[np.arange(n_units)] * t_len + np.array([u[2] for u in units])

    def replacements(site: str) -> tuple[np.ndarray, ...]:
        per_layer = []
        for j in range(n_layers):
            source = np.full(items[j], -1, np.int32)
            for index in range(active[j]):
                _, layer, token, s, (lo, hi) = units[index]
                if kind == site and lo <= j <= hi:  # restore the clean sublayer output in the window
                    source[first_item[index]] = token
                elif kind == "hidden" and sever in (site, "both") and j > layer:  # severing
                    source[first_item[index]] = t_len + s * t_len + token
            per_layer.append(source)
        return tuple(per_layer)

    return Plan(
        kind=kind,
        n_layers=n_layers,
        length=length,
        live=live,
        samples=samples,
        unit_layer=np.array([u[1] for u in units], np.int32),
        unit_token=np.array([u[2] for u in units], np.int32),
        unit_sample=np.array([u[3] for u in units], np.int32),
        unit_start=unit_start,
        active=active,
        items=items,
        item_unit=item_unit_a,
        item_row=item_row_a,
        key_index=key_index,
        query_index=query_index,
        head_index=item_unit_a * t_len + item_row_a,
        last_item=np.asarray(first_item[1:], np.int32) - 1,
        start_index=start_index.astype(np.int32),
        start_clean=start_clean,
        replace_attn=replacements("attn"),
        replace_mlp=replacements("mlp"),
    )


def _layer(params: Params, j: int) -> Params:
    return jax.tree.map(lambda a: a[j], params["layers"])


def _overwrite(values: jax.Array, source: np.ndarray, clean: jax.Array, corrupt: jax.Array) -> jax.Array:
    """Rows of `values` `[N, D]` with `source >= 0` become `concat(clean [T, D], corrupt [S*T, D])[source]`."""
    if not (source >= 0).any():
        return values
    table = jnp.concatenate([clean, corrupt.reshape(-1, corrupt.shape[-1])]).astype(values.dtype)
    return jnp.where((source >= 0)[:, None], table[np.maximum(source, 0)], values)


def run_units(
    params: Params,
    config: ModelConfig,
    plan: Plan,
    key_mask: jax.Array,
    positions: jax.Array,
    clean: dict[str, jax.Array],
    corrupt: dict[str, jax.Array],
    answer: jax.Array,
    readout_block: int = 256,
) -> jax.Array:
    """Probability of `answer` at the last token for every unit of one chunk of noise samples.

    Args:
      key_mask: `[T]` true at real (non-padding) tokens.
      positions: `[T]` position ids.
      clean: `stream [L+1, T, D]` (input of each layer, then the final residual), `attn`, `mlp` `[L, T, D]`.
      corrupt: the same per noise sample of the chunk: `stream [S, L+1, T, D]`, `attn`, `mlp` `[S, L, T, D]`.
      answer: scalar token id.

    Returns:
      `[U]` probabilities in plan order.
    """
    c = config
    t = plan.length
    d = c.d_model
    rotary = core.rotary_for(c, positions[None])  # [1, T, R] each, or None
    mask = jnp.tril(jnp.ones((t, t), bool)) & key_mask[None, :]  # [T, T]
    samples = corrupt["stream"].shape[0]

    # initial state of every item: the corrupted stream at the unit's start layer (clean at a restored row)
    y = corrupt["stream"].reshape(-1, d)[plan.start_index]  # [N, D]
    if (plan.start_clean >= 0).any():
        restored = clean["stream"].reshape(-1, d)[np.maximum(plan.start_clean, 0)]
        y = jnp.where((plan.start_clean >= 0)[:, None], restored, y)

    final = None
    for j in range(plan.n_layers):
        n_units, n_items = plan.active[j], plan.items[j]
        if n_units == 0:
            continue
        p = _layer(params, j)
        last_layer = j == plan.n_layers - 1
        rows = y[:n_items]  # [N, D]
        normed = core.norm(c, p["ln1"], rows)
        item_rotary = None if rotary is None else tuple(r[:, plan.item_row[:n_items]] for r in rotary)
        k, v = (a[0] for a in core.project_keys_values(c, p["attn"], normed[None], item_rotary))  # [N, K, E]
        cached = core.norm(c, p["ln1"], corrupt["stream"][:, j])  # [S, T, D]
        cached_rotary = (
            None if rotary is None else tuple(jnp.broadcast_to(r, (samples, *r.shape[1:])) for r in rotary)
        )
        cached_k, cached_v = core.project_keys_values(c, p["attn"], cached, cached_rotary)  # [S, T, K, E]
        kv_shape = (c.n_kv_heads, c.head_dim)
        keys = jnp.concatenate([cached_k.reshape(-1, *kv_shape), k])[plan.key_index[:n_units]]  # [C, T, K, E]
        values = jnp.concatenate([cached_v.reshape(-1, *kv_shape), v])[plan.key_index[:n_units]]
        if last_layer:
            # only the last token is read out: its query, attention output and MLP, one row per unit;
            # the other rows contributed their keys and values above
            pick = plan.last_item[:n_units]
            rows, normed = rows[pick], normed[pick]  # [C, D]
            last_rotary = None if rotary is None else tuple(r[:, plan.item_row[pick]] for r in rotary)
            queries = core.project_queries(c, p["attn"], normed[None], last_rotary)[0][
                :, None
            ]  # [C, 1, H, E]
            heads = core.attend(c, queries, keys, values, jnp.broadcast_to(mask[-1:], (n_units, 1, t)))
            attn = core.linear(p["attn"]["o"], heads[:, 0])  # [C, D]
            replace_attn, replace_mlp = plan.replace_attn[j][pick], plan.replace_mlp[j][pick]
        else:
            zero = jnp.zeros((1, c.n_heads, c.head_dim), normed.dtype)
            item_queries = core.project_queries(c, p["attn"], normed[None], item_rotary)[0]  # [N, H, E]
            queries = jnp.concatenate([zero, item_queries])[plan.query_index[:n_units]]  # [C, T, H, E]
            heads = core.attend(
                c, queries, keys, values, jnp.broadcast_to(mask, (n_units, t, t))
            )  # [C,T,H*E]
            attn = core.linear(p["attn"]["o"], heads.reshape(n_units * t, -1)[plan.head_index[:n_items]])
            replace_attn, replace_mlp = plan.replace_attn[j], plan.replace_mlp[j]
        attn = _overwrite(attn, replace_attn, clean["attn"][j], corrupt["attn"][:, j])
        if c.parallel_residual:
            m_in = core.norm(c, p["ln1"] if c.shared_block_norm else p["ln2"], rows)
        else:
            m_in = core.norm(c, p["ln2"], rows + attn)
        mlp = core.linear(p["mlp"]["out"], core.mlp_key(c, p["mlp"], m_in))  # [N, D]
        mlp = _overwrite(mlp, replace_mlp, clean["mlp"][j], corrupt["mlp"][:, j])
        if last_layer:
            final = rows + attn + mlp  # [C, D]
        else:
            y = jax.lax.dynamic_update_slice(y, rows + attn + mlp, (0, 0))

    last = y[plan.last_item]  # [U, D]; units that never ran keep their start state
    if final is not None:  # units are sorted by start layer: the ones that ran come first
        last = jnp.concatenate([final, last[final.shape[0] :]])

    def readout(row: jax.Array) -> jax.Array:
        logits = core.unembed(c, params, row)  # [V]
        return jax.nn.softmax(logits)[answer]

    return jax.lax.map(readout, last, batch_size=readout_block)


@functools.partial(jax.jit, static_argnames=("config", "plan"))
def run_grid(
    params: Params,
    config: ModelConfig,
    plan: Plan,
    key_mask: jax.Array,
    positions: jax.Array,
    clean: dict[str, jax.Array],
    corrupt_chunks: dict[str, jax.Array],
    answer: jax.Array,
) -> jax.Array:
    """`run_units` over chunks of noise samples (`[n_chunks, S_chunk, ...]` arrays): `[n_chunks, U]`."""

    def one(chunk: dict[str, jax.Array]) -> jax.Array:
        return run_units(params, config, plan, key_mask, positions, clean, chunk, answer)

    return jax.lax.map(one, corrupt_chunks)


def grid_from_units(
    plan: Plan, probs: np.ndarray, n_samples: int, p_corrupt: float, first_live: int
) -> np.ndarray:
    """Mean over samples per cell, as a `[L, T]` grid; cells before `first_live` are `P_corrupt` exactly.

    Args:
      probs: `[n_chunks, U]` from `run_grid`; samples past `n_samples` (chunk padding) are dropped.
      p_corrupt: mean corrupted-run probability.
      first_live: first token row whose restoration can change anything (first corrupted token).
    """
    total = np.zeros((plan.n_layers, plan.length))
    for chunk in range(probs.shape[0]):
        keep = chunk * plan.samples + plan.unit_sample < n_samples
        np.add.at(total, (plan.unit_layer[keep], plan.unit_token[keep]), probs[chunk][keep])
    grid = total / n_samples
    grid[:, :first_live] = p_corrupt
    return grid
