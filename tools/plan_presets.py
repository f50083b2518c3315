"""The "Scale" table of docs/scale.md: `plan` for the four presets at bfloat16 on 1, 8 and 64 devices.

Runs in one process with 64 simulated CPU devices (meshes of the first 1, 8 or 64, all on the `model`
axis) and writes `experiments/results/plan_presets.{json,md}`. Nothing is allocated: programs are
compiled for abstract params, and their memory comes from XLA's `memory_analysis()`.

    python tools/plan_presets.py [--presets gptj-6b,...] [--devices 1,8,64] [--edits 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=64"
).strip()

import jax

from jaxedit.core.sharding import make_mesh
from jaxedit.io.files import atomic_write_bytes
from jaxedit.scale import presets
from jaxedit.scale.plan import PEAKS, plan

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"
GIB = 2.0**30
GPU_MEMORY = {"A100-80GB": 80 * 10**9, "H100-SXM": 80 * 10**9}


def fits(peak: float) -> str:
    """Whether a per-device peak fits an 80 GB GPU (with 10 % kept for the runtime)."""
    return "yes" if peak <= 0.9 * GPU_MEMORY["H100-SXM"] else "no"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(presets.HF_CONFIGS))
    parser.add_argument("--devices", default="1,8,64")
    parser.add_argument("--edits", type=int, default=1000)
    args = parser.parse_args()
    start = time.perf_counter()
    rows, out = [], {}
    for name in args.presets.split(","):
        config = presets.config(name, dtype="bfloat16")
        for n in (int(d) for d in args.devices.split(",")):
            mesh = make_mesh({"data": 1, "model": n}, jax.devices()[:n])
            result = plan(config, mesh, name=name, edits=args.edits).to_dict()
            out.setdefault(name, {})[str(n)] = result
            for program, entry in result["programs"].items():
                rows.append(
                    f"| {name} | {n} | {program} | {entry['per_device_peak_bytes'] / GIB:.2f} | "
                    f"{entry['flops'] / 1e12:.2f} | {entry['seconds_at_peak']['A100-80GB']:.4f} | "
                    f"{entry['seconds_at_peak']['H100-SXM']:.4f} | {fits(entry['per_device_peak_bytes'])} |"
                )
            print(f"{name} on {n}: done after {time.perf_counter() - start:.0f} s", flush=True)
    atomic_write_bytes(RESULTS / "plan_presets.json", json.dumps(out, indent=1).encode())
    machine = f"{platform.machine()} {os.cpu_count()} CPU cores, jax {jax.__version__}, 64 simulated devices"
    md = (
        f"""# Planned workloads of the papers' models (bfloat16, no weights)

`python tools/plan_presets.py --edits {args.edits}` on {machine}; {time.perf_counter() - start:.0f} s of
compiling. Each program is lowered and compiled for abstract params sharded on a `model` mesh axis of
1, 8 or 64 devices (axes a mesh does not divide stay replicated). Peak = XLA's per-device
`memory_analysis()` (arguments + outputs + temporaries − aliased, params included) of the program as
compiled for this machine's CPU backend, which runs bfloat16 matrix products in float32 and converts
weights ahead, so a GPU compile needs less: upper bounds; TFLOP = matrix FLOPs
of the whole program with loops at their trip counts, divided by the devices; the seconds are that
divided by the dense bf16 tensor-core peak ({PEAKS["A100-80GB"]["bfloat16"] / 1e12:.0f} TFLOP/s A100,
{PEAKS["H100-SXM"]["bfloat16"] / 1e12:.0f} H100 SXM): lower bounds. "fits 80 GB" = peak ≤ 72 GB.
Programs: `forward` 8 × 128 tokens, all logits; `trace` the clean / corrupted runs and one hidden-kind
grid of a 16-token prompt (10 samples); `rome` one edit's 20-step target loop (22 rows) and solve;
`mass` a MEMIT batch of {args.edits} edits (25-step target loops in 2 GiB-budget chunks, 5 solves).

| model | devices | program | peak GiB/device | TFLOP/device | A100 s (min) | H100 s (min) | fits 80 GB |
|---|---|---|---|---|---|---|---|
"""
        + "\n".join(rows)
        + "\n"
    )
    atomic_write_bytes(RESULTS / "plan_presets.md", md.encode())
    print(md)


if __name__ == "__main__":
    main()
