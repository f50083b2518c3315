"""Which XLA CPU library path makes jaxedit's forward fastest here, with logits unchanged (issue 38).

XLA's CPU backend can hand matrix products (and the elementwise / reduction work around them) to
oneDNN, XNNPACK or YNNPACK instead of its own emitters; which one wins depends on the CPU (AVX2 vs
AVX-512 / AMX). Each candidate runs in its own fresh process (XLA flags are read once, at backend
start), on the same token ids, and reports:

- the forward of SmolLM2-135M on `--batch` x `--tokens` ids (median of `--repeats`) and its compile time,
  its matmul rate (jaxpr FLOPs / time) against the machine's peak (the best square-matmul rate measured
  by any candidate or by PyTorch), and `transformers`' forward on the same ids as the ratio's reference;
- the largest logit difference from the default path's logits and from `transformers`';
- with `--rome`, one ROME target optimisation (compile, then warm run): the largest program users wait on;
- with `--trace`, the three-kind trace of the Eiffel Tower prompt (first call, compile included, then
  warm), and how far its grids move from the default path's.

    python tools/bench_cpu_paths.py [--batch 16] [--tokens 32] [--repeats 10] [--rome] [--trace] [--only NAME ...]

The last lines are `RATIO forward <name> <x>` for each candidate and `BEST <name>`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_report import timings

# name -> XLA flags (added to the process's XLA_FLAGS); the fusion types are those jaxlib lists
CANDIDATES: dict[str, str] = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn-dot": "--xla_cpu_experimental_onednn_fusion_type=dot",
    "onednn-fusions": "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "xnn-dot": "--xla_cpu_experimental_xnn_fusion_type=dot",
    "xnn-fusions": "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
    "ynn-dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "ynn-fusions": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
    # cheaper code generation: shorter compiles, at what cost in run time
    "llvm-cheap": "--xla_llvm_disable_expensive_passes=true",
    "opt-level-1": "--xla_backend_optimization_level=1",
    "opt-level-0": "--xla_backend_optimization_level=0",
    # XLA's older elemental emitters instead of its MLIR fusion emitters: about half the compile time
    "legacy-emitters": "--xla_cpu_use_fusion_emitters=false",
    "legacy-emitters-plain-scheduler": "--xla_cpu_use_fusion_emitters=false --xla_cpu_enable_concurrency_optimized_scheduler=false",
}


def median_seconds(fn, repeats: int) -> float:
    return statistics.median(timings(fn, repeats))


def matmul_rate(matmul, shape: tuple[int, int, int], repeats: int = 10) -> float:
    """GFLOP/s of `matmul` on float32 `[m, k] x [k, n]` operands (best of `repeats`, after a warm-up)."""
    m, k, n = shape
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    matmul(a, b)
    return 2 * m * k * n / min(timings(lambda: matmul(a, b), repeats)) / 1e9


PEAK_SHAPE = (1024, 1024, 1024)


def forward_shapes(config, rows: int) -> dict[str, tuple[int, int, int]]:
    """The forward's matrix products on `rows` tokens (and a fused QKV, a layout the forward could use)."""
    d, f, kv = config.d_model, config.d_mlp, config.n_kv_heads * config.head_dim
    return {"q / o": (rows, d, d), "k / v": (rows, d, kv), "qkv fused": (rows, d, d + 2 * kv),
            "mlp in": (rows, d, f), "mlp out": (rows, f, d), "unembed": (rows, d, config.vocab_size)}  # fmt: skip


def worker(args: argparse.Namespace) -> None:
    """One candidate, in this process (its XLA flags already set by the parent)."""
    import jax
    import jax.numpy as jnp

    import jaxedit
    from jaxedit.scale.flops import matmul_flops

    jax.config.update("jax_compilation_cache_dir", None)  # every program compiled here
    model = jaxedit.load_model("smollm2")
    ids = np.load(args.ids)

    def forward():
        return jaxedit.forward(model.params, model.config, ids).logits.block_until_ready()

    start = time.perf_counter()
    logits = np.asarray(forward())
    compile_s = time.perf_counter() - start
    seconds = median_seconds(forward, args.repeats)
    flops = matmul_flops(lambda p, i: jaxedit.forward(p, model.config, i).logits, model.params, ids)
    dot = jax.jit(jnp.matmul)

    def run_dot(a, b):
        return dot(a, b).block_until_ready()

    shapes = forward_shapes(model.config, ids.size)
    record = {"compile_s": compile_s, "forward_s": seconds, "gflops": flops / seconds / 1e9,
              "peak": matmul_rate(run_dot, PEAK_SHAPE),
              "matmuls": {name: matmul_rate(run_dot, shape) for name, shape in shapes.items()}}  # fmt: skip
    if args.rome:
        from jaxedit.edit import default_layer
        from jaxedit.edit.requests import Request
        from jaxedit.edit.rome import default_hparams
        from jaxedit.edit.targets import optimise_targets

        request = Request(prompt="The mother tongue of {} is", subject="Danielle Darrieux", target="English")
        templates = ["{}", "Today, {}", "It is known that {}"]
        hp = default_hparams(model).targets

        def optimise():
            return optimise_targets(model, [request], hp=hp, layer=default_layer(model), templates=templates)

        start = time.perf_counter()
        optimise()
        first = time.perf_counter() - start
        record["rome_warm_s"] = median_seconds(optimise, 2)
        record["rome_first_s"] = first
    if args.trace:
        from jaxedit.trace import trace

        def traced():
            return trace(model, "The Eiffel Tower is located in the city of", subject="The Eiffel Tower")

        start = time.perf_counter()
        grids = traced().grids
        record["trace_first_s"] = time.perf_counter() - start
        record["trace_warm_s"] = median_seconds(traced, 2)
        np.savez(args.out + "_grids.npz", **grids)
    np.save(args.out + ".npy", logits)
    Path(args.out + ".json").write_text(json.dumps(record))


def run_candidate(name: str, ids_path: str, tmp: str, args: argparse.Namespace) -> dict | None:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {CANDIDATES[name]}".strip()
    out = f"{tmp}/{name}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--ids", ids_path, "--out", out,
           "--repeats", str(args.repeats)] + ["--rome"] * args.rome + ["--trace"] * args.trace  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(
            f"{name}: failed ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})"
        )
        return None
    record = json.loads(Path(out + ".json").read_text())
    record["logits"] = np.load(out + ".npy")
    if args.trace:
        record["grids"] = dict(np.load(out + "_grids.npz"))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rome", action="store_true", help="also time one ROME target optimisation")
    parser.add_argument("--trace", action="store_true", help="also time one three-kind trace")
    parser.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="candidates to run")
    parser.add_argument("--json", help="write the table here as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import torch
    from bench_report import cpu_name, write_figures
    from reference_model import reference_model

    reference = reference_model()
    vocab = reference.config.vocab_size
    ids = np.random.default_rng(0).integers(0, vocab, size=(args.batch, args.tokens))
    torch_ids = torch.tensor(ids)

    def run_torch():
        with torch.inference_mode():
            return reference(torch_ids).logits

    ref_logits = run_torch().numpy()
    torch_s = median_seconds(run_torch, args.repeats)

    def torch_dot(a, b):
        return torch.from_numpy(a) @ torch.from_numpy(b)

    import jaxedit

    shapes = forward_shapes(jaxedit.load_model("smollm2").config, ids.size)
    torch_peak = matmul_rate(torch_dot, PEAK_SHAPE)
    torch_matmuls = {name: matmul_rate(torch_dot, shape) for name, shape in shapes.items()}
    print(
        f"cpu: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    print(
        f"SmolLM2-135M float32, forward of {args.batch} x {args.tokens} tokens; transformers {torch_s * 1e3:.1f} ms"
    )

    names = args.only or list(CANDIDATES)
    if "default" not in names:
        names = ["default", *names]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        ids_path = f"{tmp}/ids.npy"
        np.save(ids_path, ids)
        for name in names:
            record = run_candidate(name, ids_path, tmp, args)
            if record is not None:
                rows[name] = record
    peak = max([torch_peak, *(r["peak"] for r in rows.values())])
    base = rows["default"]["logits"]
    print(
        f"machine peak (best 1024^3 float32 matmul, any path or torch): {peak:.0f} GFLOP/s (torch {torch_peak:.0f})"
    )
    header = f"{'candidate':16} {'forward ms':>10} {'ratio':>6} {'GFLOP/s':>8} {'of peak':>7} {'compile s':>9} {'|Δ| default':>11} {'|Δ| torch':>9}"
    if args.rome:
        header += f" {'rome first s':>12} {'rome warm s':>11}"
    if args.trace:
        header += f" {'trace first s':>13} {'trace warm s':>12} {'grid |Δ|':>9}"
    print(header)
    table = {}
    for name, r in rows.items():
        row = {
            "flags": CANDIDATES[name], "forward_ms": r["forward_s"] * 1e3, "ratio": torch_s / r["forward_s"],
            "gflops": r["gflops"], "of_peak": r["gflops"] / peak, "compile_s": r["compile_s"],
            "diff_default": float(np.abs(r["logits"] - base).max()),
            "diff_torch": float(np.abs(r["logits"] - ref_logits).max()),
        }  # fmt: skip
        line = (f"{name:16} {row['forward_ms']:10.1f} {row['ratio']:6.3f} {row['gflops']:8.0f} {row['of_peak']:7.1%}"
                f" {row['compile_s']:9.2f} {row['diff_default']:11.2e} {row['diff_torch']:9.2e}")  # fmt: skip
        if args.rome:
            row["rome_first_s"], row["rome_warm_s"] = r["rome_first_s"], r["rome_warm_s"]
            line += f" {r['rome_first_s']:12.2f} {r['rome_warm_s']:11.2f}"
        if args.trace:
            base_grids = rows["default"]["grids"]
            row["trace_first_s"], row["trace_warm_s"] = r["trace_first_s"], r["trace_warm_s"]
            row["grid_diff_default"] = max(
                float(np.abs(g - base_grids[k]).max()) for k, g in r["grids"].items()
            )
            line += f" {r['trace_first_s']:13.2f} {r['trace_warm_s']:12.2f} {row['grid_diff_default']:9.2e}"
        table[name] = row
        print(line)
    exact = {n: row for n, row in table.items() if row["diff_default"] <= 1e-4}
    best = max(exact, key=lambda n: exact[n]["ratio"])
    for name, row in table.items():
        print(f"RATIO forward {name} {row['ratio']:.3f}")
    print("matrix products of the forward, GFLOP/s (best of 10): " + ", ".join(
        f"{name} {shape}" for name, shape in shapes.items()))  # fmt: skip
    print(f"{'candidate':16} " + " ".join(f"{name:>10}" for name in shapes))
    print(f"{'torch':16} " + " ".join(f"{torch_matmuls[name]:10.0f}" for name in shapes))
    for name, r in rows.items():
        print(f"{name:16} " + " ".join(f"{r['matmuls'][m]:10.0f}" for m in shapes))
        table[name]["matmuls"] = r["matmuls"]
    print(f"BEST {best} (fastest with logits within 1e-4 of the default path's)")
    write_figures(args.json, "cpu_paths", {"transformers_ms": torch_s * 1e3, "peak_gflops": peak,
                                           "torch_matmuls": torch_matmuls,
                                           "candidates": table, "best": best})  # fmt: skip


if __name__ == "__main__":
    main()
