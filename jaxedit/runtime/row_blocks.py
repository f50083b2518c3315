"""Running a row-wise function over blocks of rows, so that its intermediates stay in cache.

XLA on a CPU runs one operation over a whole array before the next: an MLP over 16k rows writes its
`[16k, F]` hidden activations to memory and reads them back. Run over blocks of a few hundred rows
(`lax.fori_loop`), the same operations keep each block's intermediates in cache. The result is the
same row for row. (Inside the trace grid the gain over whole arrays was within this CPU's run-to-run
noise; the streamed readout of `jaxedit.core.readout`, which uses the same blocks, gained measurably.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxedit.errors import InputError

ROW_MULTIPLE = 8  # block sizes are rounded up to this many rows


def block_size(rows: int, row_block: int) -> tuple[int, int]:
    """`(blocks, size)`: the fewest blocks of at most about `row_block` rows covering `rows`, equal sizes.

    Sizes are rounded up to a multiple of 8, so the padding is under 8 rows per block.
    """
    if row_block < 1:
        raise InputError(f"row_block must be at least 1, got {row_block}")
    count = max(1, -(-rows // row_block))
    size = -(-rows // count)
    return count, -(-size // ROW_MULTIPLE) * ROW_MULTIPLE


def map_row_blocks(fn: Callable[..., Any], xs: tuple[jax.Array, ...], row_block: int | None) -> Any:
    """`fn(*xs)` for arrays sharing a leading row axis, computed block by block; `row_block` None: at once.

    `fn` must treat rows independently (row i of every output depends only on row i of each input); it
    may return one array or a tuple of them. Blocks are read from the inputs and written into the outputs
    in place (`lax.fori_loop`); the last block is shifted back to end at the last row, so its first rows
    are computed twice, to the same values, instead of padding every input with a copy.
    """
    rows = xs[0].shape[0]
    if row_block is None or rows <= row_block:
        return fn(*xs)
    count, size = block_size(rows, row_block)
    size = min(size, rows)
    block_shapes = tuple(jax.ShapeDtypeStruct((size, *x.shape[1:]), x.dtype) for x in xs)
    outputs = jax.eval_shape(fn, *block_shapes)

    def body(index: jax.Array, out: Any) -> Any:
        start = jnp.minimum(index * size, rows - size)
        block = fn(*(jax.lax.dynamic_slice_in_dim(x, start, size) for x in xs))
        return jax.tree.map(lambda a, b: jax.lax.dynamic_update_slice_in_dim(a, b, start, 0), out, block)

    empty = jax.tree.map(lambda s: jnp.zeros((rows, *s.shape[1:]), s.dtype), outputs)
    return jax.lax.fori_loop(0, count, body, empty)
