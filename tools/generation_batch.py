"""What one generation call costs as its batch grows: the measurement behind sharing the fluency
generations of several edited models in one call (`jaxedit.core.row_deltas`,
`jaxedit.evaluate.runner.EDITS_SCORED_TOGETHER`).

A decoding step reads every weight for a handful of rows, so on a CPU its time grows far slower than its
batch. Prints the seconds of one `generate_text` call of `--tokens` top-k 5 tokens per batch size (warm,
best of `--repeats`), and the same batch with each row running its own rank-one edit (`row_deltas`).

    python tools/generation_batch.py [--sizes 2 4 8 16] [--tokens 50] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_report import cpu_name

import jaxedit
from jaxedit.core.generate import generate_text
from jaxedit.edit import Delta
from jaxedit.edit.delta import row_deltas

PROMPTS = ("The Eiffel Tower is located in the city of", "Danielle Darrieux's mother tongue is")


def best_seconds(call, repeats: int) -> float:
    call()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = jaxedit.load_model("smollm2")
    c = model.config
    rng = np.random.default_rng(0)
    print(f"cpu: {cpu_name()}; SmolLM2-135M (float32), {args.tokens} tokens, top-k 5")
    for size in args.sizes:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(size)]
        deltas = [
            Delta(layers=(4,), left=rng.normal(size=(1, 1, c.d_mlp)) * 1e-3,
                  right=rng.normal(size=(1, 1, c.d_model)) * 1e-3, method="random")
            for _ in range(size)
        ]  # fmt: skip
        per_row = row_deltas(deltas, list(range(size)))
        plain = best_seconds(
            lambda p=prompts: generate_text(model, p, max_new_tokens=args.tokens, top_k=5), args.repeats
        )
        edited = best_seconds(
            lambda p=prompts, r=per_row: generate_text(model, p, max_new_tokens=args.tokens, top_k=5, row_deltas=r),
            args.repeats,
        )  # fmt: skip
        print(f"batch {size:3d}: {plain:.2f} s per call; with a rank-one edit per row: {edited:.2f} s")


if __name__ == "__main__":
    main()
