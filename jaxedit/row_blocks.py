"""Running a row-wise function over blocks of rows, so that its intermediates stay in cache.

XLA on a CPU runs one operation over a whole array before the next: an MLP over 16k rows writes its
`[16k, F]` hidden activations to memory and reads them back. Run over blocks of a few hundred rows
(`lax.map`), the same operations keep each block's intermediates in cache. The result is the same row
for row. (Inside the trace grid the gain over whole arrays was within this CPU's run-to-run noise; the
streamed readout of `jaxedit.readout`, which uses the same blocks, gained measurably.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

ROW_MULTIPLE = 8  # block sizes are rounded up to this many rows


def block_size(rows: int, row_block: int) -> tuple[int, int]:
    """`(blocks, size)`: the fewest blocks of at most about `row_block` rows covering `rows`, equal sizes.

    Sizes are rounded up to a multiple of 8, so the padding is under 8 rows per block.
    """
    if row_block < 1:
        raise ValueError(f"row_block must be at least 1, got {row_block}")
    count = max(1, -(-rows // row_block))
    size = -(-rows // count)
    return count, -(-size // ROW_MULTIPLE) * ROW_MULTIPLE


def map_row_blocks(fn: Callable[..., Any], xs: tuple[jax.Array, ...], row_block: int | None) -> Any:
    """`fn(*xs)` for arrays sharing a leading row axis, computed block by block; `row_block` None: at once.

    `fn` must treat rows independently (row i of every output depends only on row i of each input); it
    may return one array or a tuple of them. Padding rows (zeros) are computed and dropped.
    """
    rows = xs[0].shape[0]
    if row_block is None or rows <= row_block:
        return fn(*xs)
    count, size = block_size(rows, row_block)
    pad = count * size - rows
    blocked = tuple(
        jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(count, size, *x.shape[1:]) for x in xs
    )
    out = jax.lax.map(lambda block: fn(*block), blocked)
    return jax.tree.map(lambda a: a.reshape(count * size, *a.shape[2:])[:rows], out)
