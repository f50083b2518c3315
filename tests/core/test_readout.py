"""The streamed answer probability equals softmax over the full logits; row blocks cover every row once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxedit
from jaxedit.core import decoder
from jaxedit.core.readout import token_probability
from jaxedit.runtime.row_blocks import block_size, map_row_blocks


@pytest.mark.parametrize("name", ["llama_gqa_untied", "gptj", "gpt2"])  # untied, untied with bias, tied
def test_token_probability_equals_softmax_of_full_logits(tiny_dirs, name) -> None:
    model = jaxedit.load_model(tiny_dirs[name])
    c = model.config
    x = 4.0 * jax.random.normal(jax.random.key(0), (37, c.d_model))  # confident, varied predictions
    logits = decoder.unembed(c, model.params, x)
    for token in (0, 5, c.vocab_size - 1):
        expected = np.asarray(jax.nn.softmax(logits, axis=-1)[:, token])
        # blocks that divide the vocabulary, blocks that leave a remainder, one block; rows in padded blocks
        for vocab_block, row_block in ((None, None), (c.vocab_size, 16), (7, 8), (c.vocab_size // 3, 5)):
            got = token_probability(
                c, model.params, x, jnp.int32(token), vocab_block=vocab_block, row_block=row_block
            )
            np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-7)
    assert "bias" in model.params.get("unembed", {}) or name != "gptj"  # the bias path is exercised


def test_block_sizes_cover_the_rows_with_little_padding() -> None:
    for rows in (1, 7, 8, 9, 511, 512, 513, 5000, 16383):
        for row_block in (1, 8, 100, 512):
            count, size = block_size(rows, row_block)
            assert size % 8 == 0 and count * size >= rows
            assert count * size - rows < 8 * count  # padding under 8 rows per block
            assert count == max(1, -(-rows // row_block))  # the fewest blocks of at most row_block rows
    with pytest.raises(ValueError, match="row_block"):
        block_size(10, 0)


def test_map_row_blocks_equals_the_whole_computation() -> None:
    x = jnp.arange(43 * 3, dtype=jnp.float32).reshape(43, 3)
    index = jnp.arange(43) % 5

    def fn(x, index):
        return x * index[:, None] + 1.0  # exact in float32: any row out of place would show

    for row_block in (None, 1, 8, 10, 43, 100):
        np.testing.assert_array_equal(map_row_blocks(fn, (x, index), row_block), fn(x, index))
