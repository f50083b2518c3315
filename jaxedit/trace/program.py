"""The compiled restore grid of causal tracing (docs/methods.md §1; Meng et al., 2022, §2.1), computing only what
restoration changes; the units it runs and their rows come from `jaxedit.trace.schedule`.

A cell `(l, t)` of a grid restores, in the corrupted run, the clean hidden state `h[l]` at token t
(`hidden`), or the clean MLP / attention outputs at token t over a window of layers around l (`mlp`,
`attn`). The reference code runs one full forward pass per cell. Five facts of the problem make most of
that work unnecessary, and this engine skips it:

1. States below the first restored layer equal the corrupted run: a unit (cell x noise sample) starts
   from the cached corrupted residual stream at its first changed layer (`start`), not at the embedding.
2. Tokens before t never see the restoration (causal attention): only rows `t..T-1` of a unit are
   recomputed; the keys and values of rows before t come from the cached corrupted run.
3. Tokens before the first corrupted token are identical in the clean and corrupted runs, so restoring
   them changes nothing: those cells equal `P_corrupt` and are not run at all (only the last `live`
   rows of the prompt carry cells).
4. At the first layer `lo` of an mlp / attn window every row still reads the corrupted run's keys and
   values, so only row t changes there, and only through the restored sublayer: its output row is
   `stream + attn + mlp` with the clean sublayer output and the other one cached (mlp kind: nothing to
   compute) or computed for that row alone (attn kind: one MLP row). Units start at `lo + 1` from that
   patched row (`patch_*`), computed once per distinct (layer, token, sample) before the layer loop.
5. Windows clipped at the bottom of the model share their first layer: the cells of a token whose
   windows `[lo, hi]` start at the same `lo` restore the same sites up to the smaller `hi`, so a cell
   with the next larger `hi` starts at the layer above the smaller one's window from that cell's rows
   (it *forks* from it, `fork`) instead of recomputing the layers in between.

All units of a grid run in one jitted program. Units are sorted by start layer, so the units active at
layer j form a prefix of the unit list and every layer works on static shapes: a Python loop over layers
is unrolled at trace time into one XLA program per (kind, length bucket, live bucket, samples per chunk).
At each layer the rows to recompute are gathered into one flat batch (`items`) for the projections and
the MLP (the bulk of the FLOPs); attention runs per unit over the full prompt, with the recomputed keys
scattered over the cached corrupted ones. Noise samples are split into chunks run with `lax.map` to
bound memory. On a CPU the row-wise work (norm and projections; output projection and MLP) runs over
blocks of 512 rows so that each block's intermediates stay in cache (`jaxedit.runtime.row_blocks`), and the
answer's probability is read out by streaming the vocabulary (`jaxedit.core.readout`).

Batch rows, for the record: every unit is a corrupted run (one noise sample) with one restoration; the
clean run and the plain corrupted runs happen once, before the grid, in `jaxedit.trace.runs`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.core import decoder
from jaxedit.core.config import ModelConfig
from jaxedit.core.layout import Params
from jaxedit.core.readout import token_probability
from jaxedit.runtime.row_blocks import map_row_blocks
from jaxedit.trace.schedule import Plan

READOUT_ROW_BLOCK = 256  # rows per block of the answer-probability readout off a CPU
VOCAB_BLOCK = 4096  # vocabulary entries per streamed block of the readout on a CPU


def _layer(params: Params, j: int) -> Params:
    return jax.tree.map(lambda a: a[j], params["layers"])


def _table(clean: jax.Array, corrupt: jax.Array) -> jax.Array:
    """Replacement rows `concat(clean [T, D], corrupt [S, T, D] flattened)`: `[T + S*T, D]`."""
    return jnp.concatenate([clean, corrupt.reshape(-1, corrupt.shape[-1])])


def _overwrite(values: jax.Array, source: jax.Array | None, table: jax.Array | None) -> jax.Array:
    """Rows of `values` `[N, D]` with `source >= 0` become `table[source]` (see `_table`).

    `source` None: nothing is overwritten (known when the program is built).
    """
    if source is None:
        return values
    return jnp.where((source >= 0)[:, None], table[jnp.maximum(source, 0)].astype(values.dtype), values)


def _sources(per_layer: Sequence[np.ndarray], size: int) -> np.ndarray | None:
    """Replacement sources of a range of layers padded to `size` items `[layers, size]`, None if empty."""
    if not any((a >= 0).any() for a in per_layer):
        return None
    return np.stack([np.pad(a, (0, size - len(a)), constant_values=-1) for a in per_layer])


def _mlp_out(c: ModelConfig, p: Params, rows: jax.Array, attn: jax.Array) -> jax.Array:
    """One layer's MLP output `[N, D]` for block inputs `rows` and attention outputs `attn` (§0 wiring)."""
    m_in = decoder.mlp_input(c, p, rows, attn)
    return decoder.linear(p["mlp"]["out"], decoder.mlp_key(c, p["mlp"], m_in))


def first_window_rows(
    params: Params,
    config: ModelConfig,
    plan: Plan,
    clean: dict[str, jax.Array],
    corrupt: dict[str, jax.Array],
) -> jax.Array:
    """Output rows `[P, D]` of the patched rows (fact 4 of the module docstring): row t at layer `lo`.

    mlp kind: `stream + attn + clean mlp`, the attention output cached from the corrupted run (its
    inputs are the corrupted run's); attn kind: `stream + clean attn + mlp`, the MLP computed for the
    row with layer `lo`'s weights (rows are sorted by layer, so each layer's rows are one slice).
    """
    c = config
    s, lo, t = plan.patch_sample, plan.patch_layer, plan.patch_token
    rows = corrupt["stream"][s, lo, t]  # [P, D]
    if plan.kind == "mlp":
        return rows + corrupt["attn"][s, lo, t] + clean["mlp"][lo, t]
    attn = clean["attn"][lo, t]
    layers, counts = np.unique(lo, return_counts=True)
    if (counts == counts[0]).all() and (np.diff(layers) == 1).all():
        # every first-window layer patches the same number of rows (all live tokens x samples): one
        # MLP batched over the layers, whose program does not grow with depth
        stack = jax.tree.map(lambda a: a[layers[0] : layers[-1] + 1], params["layers"])
        x, a = (v.reshape(len(layers), int(counts[0]), -1) for v in (rows, attn))
        out = jax.vmap(lambda p, x, a: x + a + _mlp_out(c, p, x, a))(stack, x, a)
        return out.reshape(-1, rows.shape[-1])
    outputs = []
    for layer in layers:
        part = slice(int(np.searchsorted(lo, layer)), int(np.searchsorted(lo, layer, side="right")))
        x, a = rows[part], attn[part]
        outputs.append(x + a + _mlp_out(c, _layer(params, int(layer)), x, a))
    return jnp.concatenate(outputs)


class _Grid(NamedTuple):
    """What every layer of one chunk's program shares (`run_units`)."""

    config: ModelConfig
    plan: Plan
    rotary: tuple[jax.Array, jax.Array] | None  # [1, T, R] each
    cached_rotary: tuple[jax.Array, jax.Array] | None  # [S, T, R] each: the cached corrupted rows'
    mask: jax.Array  # [T, T] causal over the real tokens
    row_block: int | None


def run_units(
    params: Params, g: _Grid, clean: dict[str, jax.Array], corrupt: dict[str, jax.Array], answer: jax.Array
) -> jax.Array:
    """Probability of `answer` at the last token for every unit of one chunk of noise samples.

    Args:
      g: what every chunk shares (built by `grid_program`).
      clean: `stream [L+1, T, D]` (input of each layer, then the final residual), `attn`, `mlp` `[L, T, D]`.
      corrupt: the same per noise sample of the chunk: `stream [S, L+1, T, D]`, `attn`, `mlp` `[S, L, T, D]`.
      answer: scalar token id.

    Returns:
      `[U]` probabilities in plan order.
    """
    config, plan, row_block = g.config, g.plan, g.row_block
    y = _initial_items(params, g, clean, corrupt)
    for first, end in plan.segments:
        y = _run_segment(params, g, y, first, end, clean, corrupt)
    final = _last_layer(params, g, y, clean, corrupt)
    last = y[plan.last_item]  # [U, D]; units that never ran keep their start state
    if final is not None:  # units are sorted by start layer: the ones that ran come first
        last = jnp.concatenate([final, last[final.shape[0] :]])
    if row_block is None:  # accelerators: whole logit tables per block of rows (a vocabulary sharded
        # over devices stays sharded; streaming it in slices would gather it on every device)
        return token_probability(config, params, last, answer, vocab_block=None, row_block=READOUT_ROW_BLOCK)
    return token_probability(config, params, last, answer, vocab_block=VOCAB_BLOCK, row_block=row_block)


def _initial_items(params: Params, g: _Grid, clean: dict, corrupt: dict) -> jax.Array:
    """Every item's state `[N, D]` before the layer loop: the corrupted stream at its unit's start layer,
    the clean one at a restored hidden row, the patched row of a window's first layer (fact 4)."""
    plan, d = g.plan, g.config.d_model
    y = corrupt["stream"].reshape(-1, d)[plan.start_index]  # [N, D]
    if (plan.start_clean >= 0).any():
        restored = clean["stream"].reshape(-1, d)[np.maximum(plan.start_clean, 0)]
        y = jnp.where((plan.start_clean >= 0)[:, None], restored, y)
    if (plan.start_patch >= 0).any():
        patched = first_window_rows(params, g.config, plan, clean, corrupt)[np.maximum(plan.start_patch, 0)]
        y = jnp.where((plan.start_patch >= 0)[:, None], patched, y)
    return y


def _project_items(g: _Grid, p: Params, rows: jax.Array, n_items: int, queries: bool = True):
    """Queries `[N, H, E]` (None unless `queries`), keys and values `[N, K, E]` of the first items.

    Row-wise (the norm, the projections and each item's rotation), so it runs over row blocks.
    """
    c = g.config
    item_rotary = () if g.rotary is None else tuple(r[0, g.plan.item_row[:n_items]] for r in g.rotary)

    def rowwise(rows, *rotary_rows):
        normed = decoder.norm(c, p["ln1"], rows)[None]  # [1, N, D]
        rows_rotary = tuple(r[None] for r in rotary_rows) or None
        k, v = (a[0] for a in decoder.project_keys_values(c, p["attn"], normed, rows_rotary))
        q = decoder.project_queries(c, p["attn"], normed, rows_rotary)[0] if queries else None
        return q, k, v

    return map_row_blocks(rowwise, (rows, *item_rotary), g.row_block)


def _gather_keys(g: _Grid, p: Params, k: jax.Array, v: jax.Array, stream: jax.Array, n_units: int):
    """Keys and values `[C, T, K, E]` of the first `n_units` units at one layer (`stream`: its input):
    the items' own rows over the cached corrupted rows before each unit's token."""
    c = g.config
    kv_shape = (c.n_kv_heads, c.head_dim)
    cached = decoder.norm(c, p["ln1"], stream)  # [S, T, D]
    cached_k, cached_v = decoder.project_keys_values(c, p["attn"], cached, g.cached_rotary)  # [S, T, K, E]
    keys = jnp.concatenate([cached_k.reshape(-1, *kv_shape), k])[g.plan.key_index[:n_units]]
    values = jnp.concatenate([cached_v.reshape(-1, *kv_shape), v])[g.plan.key_index[:n_units]]
    return keys, values


def _finish(g: _Grid, p: Params, rows, heads, sources, clean_j, corrupt_j) -> jax.Array:
    """Output projection, restored / severed sublayer outputs, MLP: the block's output rows.

    `rows` `[N, D]` are the block's inputs, `heads` `[N, H*E]` their attention heads. Row-wise, so it
    runs over blocks of `row_block` rows (`jaxedit.runtime.row_blocks`).
    """
    tables = tuple(
        None if source is None else _table(clean_j[site], corrupt_j[site])
        for source, site in zip(sources, ("attn", "mlp"), strict=True)
    )
    present = tuple(jnp.asarray(source) for source in sources if source is not None)

    def rowwise(rows, heads, *given):
        given = iter(given)
        attn_source, mlp_source = (None if source is None else next(given) for source in sources)
        attn = _overwrite(decoder.linear(p["attn"]["o"], heads), attn_source, tables[0])
        mlp = _overwrite(_mlp_out(g.config, p, rows, attn), mlp_source, tables[1])  # [N, D]
        return rows + attn + mlp

    return map_row_blocks(rowwise, (rows, heads, *present), g.row_block)


def _block(g: _Grid, y, p, j, sources, fork, clean_j, corrupt_j, n_units: int, n_items: int) -> jax.Array:
    """One layer for every item of the first `n_units` units; items not started at j keep their row.

    `fork`: `[N]` item whose row each item takes first (units forked at this layer), or None.
    """
    c, plan, t = g.config, g.plan, g.plan.length
    rows = _overwrite(y[:n_items], fork, y)  # [N, D]
    item_queries, k, v = _project_items(g, p, rows, n_items)  # [N, H, E], [N, K, E] x 2
    keys, values = _gather_keys(g, p, k, v, corrupt_j["stream"], n_units)
    zero = jnp.zeros((1, c.n_heads, c.head_dim), item_queries.dtype)
    queries = jnp.concatenate([zero, item_queries])[plan.query_index[:n_units]]  # [C, T, H, E]
    heads = decoder.attend(c, queries, keys, values, jnp.broadcast_to(g.mask, (n_units, t, t)))  # [C,T,H*E]
    item_heads = heads.reshape(n_units * t, -1)[plan.head_index[:n_items]]  # [N, H*E]
    out = _finish(g, p, rows, item_heads, sources, clean_j, corrupt_j)
    if j is not None:  # a scanned range: units starting above j are padding here
        started = plan.unit_start[plan.item_unit[:n_items]]
        out = jnp.where((started <= j)[:, None], out, rows)
    return jax.lax.dynamic_update_slice(y, out, (0, 0))


def _run_segment(params: Params, g: _Grid, y: jax.Array, first: int, end: int, clean, corrupt) -> jax.Array:
    """Layers `[first, end)` at the item count of the last: one unrolled block, or a `lax.scan`."""
    plan = g.plan
    n_units, n_items = plan.active[end - 1], plan.items[end - 1]
    sources = (
        _sources(plan.replace_attn[first:end], n_items),
        _sources(plan.replace_mlp[first:end], n_items),
    )
    fork = _sources(plan.fork[first:end], n_items)
    clean_j = {k: clean[k][first:end] for k in ("attn", "mlp")}
    corrupt_j = {k: jnp.moveaxis(corrupt[k][:, first:end], 1, 0) for k in ("stream", "attn", "mlp")}
    if end - first == 1:
        return _block(
            g, y, _layer(params, first), None, tuple(None if a is None else a[0] for a in sources),
            None if fork is None else fork[0], jax.tree.map(lambda a: a[0], clean_j),
            jax.tree.map(lambda a: a[0], corrupt_j), n_units, n_items,
        )  # fmt: skip

    def step(y, xs):
        p, j, sources, fork, clean_j, corrupt_j = xs
        return _block(g, y, p, j, sources, fork, clean_j, corrupt_j, n_units, n_items), None

    layer_params = jax.tree.map(lambda a: a[first:end], params["layers"])
    xs = (layer_params, jnp.arange(first, end), sources, fork, clean_j, corrupt_j)
    return jax.lax.scan(step, y, xs)[0]


def _last_layer(params: Params, g: _Grid, y: jax.Array, clean, corrupt) -> jax.Array | None:
    """The last layer's output `[C, D]` at each running unit's last token (None when no unit runs there):
    only that row needs a query, an attention output and an MLP; the other rows give keys and values."""
    c, plan, t = g.config, g.plan, g.plan.length
    j = plan.n_layers - 1
    n_units, n_items = plan.active[j], plan.items[j]
    if not n_units:
        return None
    p = _layer(params, j)
    if (plan.fork[j] >= 0).any():
        y = jnp.concatenate([_overwrite(y[:n_items], plan.fork[j], y), y[n_items:]])
    _, k, v = _project_items(g, p, y[:n_items], n_items, queries=False)
    keys, values = _gather_keys(g, p, k, v, corrupt["stream"][:, j], n_units)
    pick = plan.last_item[:n_units]
    rows = y[pick]  # [C, D]
    normed = decoder.norm(c, p["ln1"], rows)
    last_rotary = None if g.rotary is None else tuple(r[:, plan.item_row[pick]] for r in g.rotary)
    queries = decoder.project_queries(c, p["attn"], normed[None], last_rotary)[0][:, None]  # [C, 1, H, E]
    heads = decoder.attend(c, queries, keys, values, jnp.broadcast_to(g.mask[-1:], (n_units, 1, t)))
    sources = tuple(a[j][pick] if (a[j] >= 0).any() else None for a in (plan.replace_attn, plan.replace_mlp))
    clean_j = {k: clean[k][j] for k in ("attn", "mlp")}
    corrupt_j = {k: corrupt[k][:, j] for k in ("attn", "mlp")}
    return _finish(g, p, rows, heads[:, 0], sources, clean_j, corrupt_j)  # [C, D]


@functools.partial(jax.jit, static_argnames=("config", "plan", "row_block"))
def grid_program(
    params: Params,
    config: ModelConfig,
    plan: Plan,
    key_mask: jax.Array,
    positions: jax.Array,
    clean: dict[str, jax.Array],
    corrupt_chunks: dict[str, jax.Array],
    answer: jax.Array,
    row_block: int | None,
) -> jax.Array:
    """`run_units` over chunks of noise samples (`[n_chunks, S_chunk, ...]` arrays): `[n_chunks, U]`, as one
    jitted program.

    Args:
      key_mask: `[T]` true at real (non-padding) tokens.
      positions: `[T]` position ids.
      clean: as in `run_units`.
      corrupt_chunks: `run_units`'s `corrupt` with a leading chunk axis.
      answer: scalar token id.
      row_block: rows per block of the row-wise work (`Execution.row_block`, resolved; part of the
        program); None: all at once.
    """

    t, samples = plan.length, corrupt_chunks["stream"].shape[1]
    rotary = decoder.rotary_for(config, positions[None])  # [1, T, R] each, or None
    cached_rotary = (
        None if rotary is None else tuple(jnp.broadcast_to(r, (samples, *r.shape[1:])) for r in rotary)
    )
    mask = jnp.tril(jnp.ones((t, t), bool)) & key_mask[None, :]
    g = _Grid(config, plan, rotary, cached_rotary, mask, row_block)
    return jax.lax.map(lambda chunk: run_units(params, g, clean, chunk, answer), corrupt_chunks)


def grid_from_units(
    plan: Plan, probs: np.ndarray, n_samples: int, p_corrupt: float, first_live: int
) -> np.ndarray:
    """Mean over samples per cell, as a `[L, T]` grid; cells before `first_live` are `P_corrupt` exactly.

    Args:
      probs: `[n_chunks, U]` from `grid_program`; samples past `n_samples` (chunk padding) are dropped.
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
