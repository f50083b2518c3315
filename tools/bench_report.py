"""What every benchmark under tools/ reports besides its own table: the cold figure and its compiles.

`cold_start()` makes sure the process compiles from nothing (the persistent compile cache off), so a
benchmark's first call is what a user's first call costs; `report_compiles(log)` prints the programs a
call compiled (count, seconds, slowest); `write_figures(path, figures)` writes the benchmark's figures as
JSON for the docs' benchmark page. Each benchmark prints `RATIO <name> <steady>` and
`RATIO <name> cold <x>`, model loading excluded on both sides.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import jax

from jaxedit.io.files import atomic_write_bytes
from jaxedit.runtime.compile_log import CompileLog


def timings(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of `fn` (which blocks until its result is ready)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def timing_summary(times: list[float]) -> dict[str, float | int]:
    """Median, fastest, slowest and count of `times` (seconds), for the JSON the docs page reads."""
    ordered = sorted(times)
    return {
        "median_s": statistics.median(ordered),
        "min_s": ordered[0],
        "max_s": ordered[-1],
        "runs": len(ordered),
    }


def cold_start() -> None:
    """Turn the persistent compile cache off: every program of this process is compiled here."""
    jax.config.update("jax_compilation_cache_dir", None)


def report_compiles(label: str, log: CompileLog) -> None:
    print(f"{label}: {log.summary()}")
    for name, (count, seconds) in log.by_name().items():
        print(f"    {name}: {count} program(s), {seconds:.1f} s")


def cpu_name() -> str:
    """The CPU model (lscpu), for logs: CPU kinds here differ 2-2.5x in matmul rate."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def write_figures(path: str | None, name: str, figures: dict) -> None:
    """`figures` (and the machine) as JSON at `path`, when given."""
    if not path:
        return
    record = {"benchmark": name, "cpu": cpu_name(), "cores": os.cpu_count(), "jax": jax.__version__,
              "device": jax.devices()[0].device_kind, **figures}  # fmt: skip
    atomic_write_bytes(Path(path), json.dumps(record, indent=1).encode())
    print(f"figures written to {path}")
