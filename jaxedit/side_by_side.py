"""Independent jitted calls run side by side from host threads, to keep every CPU core busy.

XLA on a CPU runs the operations of one program one after the other, each split over the cores; in the
gaps between operations, and in operations too small to split, cores wait. Two independent programs
started from two threads fill each other's gaps. On the 2-core CPU of this project, the three-kind trace
grid of SmolLM2 split into two half-sample programs run at once took less time than one program over
all samples (`tools/bench_trace.py --threads 1` against the default prints both). An accelerator runs
one program at a time per device, so there the default is one thread. So is it with several devices or
processes: programs with collectives must start in the same order on every process (under
`jax.distributed`, threads that race to launch them mismatch the collectives and crash the run).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import jax

from jaxedit.errors import InputError

T = TypeVar("T")

CPU_THREADS = 2  # programs at once on a multi-core CPU: two fill the gaps; more only split the work finer


def cpu_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_threads() -> int:
    """Programs to run at once: `CPU_THREADS` on a single-device CPU with that many cores, else 1."""
    if jax.default_backend() != "cpu" or jax.device_count() > 1:
        return 1
    return max(1, min(CPU_THREADS, cpu_cores()))


def resolve_threads(threads: int | str) -> int:
    """`threads` checked (a positive int; 1 when several processes run), `"auto"`: `default_threads()`."""
    if threads == "auto":
        return default_threads()
    if type(threads) is not int or threads < 1:
        raise InputError(f"threads must be 'auto' or a positive int, got {threads!r}")
    if threads > 1 and jax.process_count() > 1:
        raise InputError(
            f"threads={threads} needs a single process: under jax.distributed every process must launch "
            "its programs in the same order; use threads=1"
        )
    return threads


def run_side_by_side(calls: Sequence[Callable[[], T]], threads: int) -> list[T]:
    """The results of `calls`, in order, with up to `threads` of them running at once.

    Each call's result is waited for (`jax.block_until_ready`) inside its thread, so a thread holds one
    running program at a time. An exception in a call is raised here after the running calls finish.
    """
    if threads < 1:
        raise InputError(f"threads must be at least 1, got {threads}")

    def call_and_wait(call: Callable[[], T]) -> T:
        return jax.block_until_ready(call())

    if threads == 1 or len(calls) <= 1:
        return [call_and_wait(call) for call in calls]
    with ThreadPoolExecutor(max_workers=min(threads, len(calls))) as pool:
        return list(pool.map(call_and_wait, calls))
