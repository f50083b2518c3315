"""Forward throughput: jaxedit vs `transformers` PyTorch on SmolLM2-135M, same weights, same machine.

Both run the full causal LM forward (all logits) on the same batch of token ids in float32. Compile
time of the jitted jaxedit forward is excluded from the steady ratio and included in the cold one (the
first call of each side in this process, jaxedit's with the persistent compile cache off). The last
lines are `RATIO forward <reference_seconds / jaxedit_seconds>` and `RATIO forward cold <...>`.

    python tools/bench_forward.py [--batch 16] [--tokens 32] [--repeats 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np
import torch
from bench_report import cpu_name, timing_summary, timings, write_figures
from reference_model import reference_model

import jaxedit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args()
    jax.config.update("jax_compilation_cache_dir", None)  # the cold figure compiles every program

    model = jaxedit.load_model("smollm2")
    reference = reference_model()
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(args.batch, args.tokens))
    torch_ids = torch.tensor(ids)

    def run_jax() -> None:
        jaxedit.forward(model.params, model.config, ids).logits.block_until_ready()

    def run_torch() -> None:
        with torch.inference_mode():
            reference(torch_ids).logits.sum()

    start = time.perf_counter()
    run_jax()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    run_torch()  # also the warm-up
    torch_first_s = time.perf_counter() - start
    jax_times = timings(run_jax, args.repeats)
    torch_times = timings(run_torch, args.repeats)
    with torch.inference_mode():
        ref_logits = reference(torch_ids).logits.numpy()
    diff = float(
        np.abs(np.asarray(jaxedit.forward(model.params, model.config, ids).logits) - ref_logits).max()
    )

    jax_s, torch_s = statistics.median(jax_times), statistics.median(torch_times)
    print(
        f"machine: {cpu_name()} ({platform.machine()}), {os.cpu_count()} cores, jax {jax.__version__} "
        f"({jax.devices()[0].platform}), torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    print(
        f"model: SmolLM2-135M-Instruct (GGUF dequantised to float32), batch {args.batch} x {args.tokens} tokens"
    )
    print(f"jaxedit compile + first run: {compile_s:.2f} s")
    print(f"jaxedit forward: median {jax_s * 1e3:.1f} ms over {args.repeats} runs")
    print(f"transformers forward: median {torch_s * 1e3:.1f} ms over {args.repeats} runs")
    print(f"max |logit difference|: {diff:.2e}")
    print(f"transformers first call: {torch_first_s * 1e3:.1f} ms")
    print(f"RATIO forward {torch_s / jax_s:.3f}")
    print(f"RATIO forward cold {torch_first_s / compile_s:.3f}")
    write_figures(args.json, "forward", {"batch": args.batch, "tokens": args.tokens, "repeats": args.repeats,
                                         "jaxedit": timing_summary(jax_times), "transformers": timing_summary(torch_times),
                                         "jaxedit_first_s": compile_s, "transformers_first_s": torch_first_s,
                                         "max_logit_diff": diff, "ratio": torch_s / jax_s, "ratio_cold": torch_first_s / compile_s})  # fmt: skip


if __name__ == "__main__":
    main()
