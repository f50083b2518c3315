"""Independent jitted calls run side by side from host threads, to keep every CPU core busy.

XLA on a CPU runs the operations of one program one after the other, each split over the cores; in the
gaps between operations, and in operations too small to split, cores wait. Two independent programs
started from two threads fill each other's gaps. On the 2-core CPU of this project, the three-kind trace
grid of SmolLM2 split into two half-sample programs run at once took less time than one program over
all samples (`tools/bench_trace.py --threads 1` against the default prints both). An accelerator runs
one program at a time per device, so there the default is one thread. So is it with several devices or
processes: programs with collectives must start in the same order on every process (under
`jax.distributed`, threads that race to launch them mismatch the collectives and crash the run). The
number of threads is `jaxedit.runtime.execution.Execution.threads`, chosen per backend there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import jax

from jaxedit.errors import InputError

T = TypeVar("T")


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
