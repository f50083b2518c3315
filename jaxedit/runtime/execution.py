"""How a computation runs, never what it computes: one frozen value for every speed or memory setting.

`trace`, `trace_dataset`, `optimise_targets` and the benchmarks' scoring (`evaluate_edits`,
`evaluate_counterfact`, `evaluate_zsre`) take `execution=Execution(...)` and otherwise only parameters
that change their result. Every choice that depends on the backend (a CPU or an
accelerator) is made here, in `Execution.resolved`, and nowhere else:

- `threads`: grid programs run at once from host threads (`jaxedit.runtime.side_by_side`): 2 on a multi-core,
  single-device CPU (its cores otherwise idle between a program's operations), 1 elsewhere;
- `row_block`: rows per block of the trace grids' row-wise work (`jaxedit.runtime.row_blocks`): 512 on a CPU
  (each block's MLP intermediates stay in cache), whole arrays on an accelerator;
- `shapes`: how a dataset trace pads its prompts: `bucket` on a CPU (the least work), `single` on an
  accelerator (one grid program per kind: compiling one takes minutes there);
- `window_multiple`: target optimisation's suffix windows rounded up to multiples of this: 1 on a CPU
  (a loop compiles there in ~3 s, less than the padded tokens cost over a run: `tools/window_rounding.py`,
  30 ROME evaluations 411 s exact against 454 s rounded to 4), 4 on an accelerator (fewer compiled loops);
- `segments`: scanned layer ranges of a grid program, `DEFAULT_SEGMENTS` on every backend (a compile
  time that does not grow with depth; docs/performance.md).

Results do not depend on any field beyond float rounding (the trace tests compare grids across them).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Literal

import jax

from jaxedit.errors import InputError

ROW_BLOCK_CPU = 512  # rows per block of the trace grids' row-wise work on a CPU
DEFAULT_SEGMENTS = 6  # scanned layer ranges per grid program: compile time independent of depth
TARGET_MEMORY = 2 * 2**30  # bytes of activations a chunk of target optimisations may hold

Auto = Literal["auto"]

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


@dataclass(frozen=True)
class Execution:
    """Speed and memory settings (see the module docstring); `"auto"` fields are chosen per backend.

    Attributes:
      threads: programs run at once from host threads; `"auto"`: 2 on a CPU, 1 elsewhere.
      segments: layers below a grid's last run as at most this many scanned ranges padded to shared
        shapes; None unrolls them (the least work, a compile that grows with depth); `"auto"`: 6.
      row_block: rows per block of the grids' row-wise work; None: all at once; `"auto"`: per backend.
      chunk_samples: noise samples per chunk of a grid program (None: as many as fit 256 MiB).
      bucket: pad a prompt's length, and its span of cell-carrying rows, to multiples of this so
        prompts of nearby lengths share compiled programs; None: 1 for one prompt (exactly the cells
        needed), 4 for a dataset.
      pad_to: `(length, live)`: pad to at least this prompt length and this many cell-carrying rows
        (`trace_dataset` sets it per fact when its prompts share shapes).
      shapes: a dataset's prompt padding: `bucket`, `single` (one shape), an int k (at most k shapes
        grouped by length), `"auto"`: per backend.
      workers: facts of a dataset traced at once by threads (on an accelerator, compiles of new shapes
        run in parallel on the host's cores; on a CPU keep 1: each trace already runs `threads`).
      window_multiple: round target optimisation's suffix windows (key token to last target token) up
        to multiples of this; `"auto"`: per backend.
      max_rows: batch rows per chunk of target optimisations (None: what `memory_budget` allows).
      memory_budget: bytes of activations a chunk of target optimisations may hold.
      score_cases: benchmark cases scored together in shared forward batches (each chunk's per-case
        files are written when it finishes, so an interruption loses at most one chunk).
      progress: show progress bars.
    """

    threads: int | Auto = "auto"
    segments: int | Auto | None = "auto"
    row_block: int | Auto | None = "auto"
    chunk_samples: int | None = None
    bucket: int | None = None
    pad_to: tuple[int, int] | None = None
    shapes: str | int = "auto"
    workers: int = 1
    window_multiple: int | Auto = "auto"
    max_rows: int | None = None
    memory_budget: float = TARGET_MEMORY
    score_cases: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        for name, allowed in (("threads", ("auto",)), ("segments", ("auto", None)), ("row_block", ("auto", None)),
                              ("chunk_samples", (None,)), ("bucket", (None,)), ("workers", ()), ("window_multiple", ("auto",)),
                              ("max_rows", (None,)), ("score_cases", ()), ("shapes", ("auto", "bucket", "single"))):  # fmt: skip
            _check_positive(name, getattr(self, name), allowed)
        if self.pad_to is not None and (
            len(self.pad_to) != 2 or any(type(v) is not int or v < 0 for v in self.pad_to)
        ):
            raise InputError(
                f"execution pad_to must be a (length, live) pair of non-negative ints, got {self.pad_to!r}"
            )
        if not self.memory_budget > 0:
            raise InputError(
                f"execution memory_budget must be a positive number of bytes, got {self.memory_budget!r}"
            )

    def resolved(self, backend: str | None = None) -> Execution:
        """This value with every `"auto"` field chosen for `backend` (default: JAX's default backend)."""
        cpu = (backend or jax.default_backend()) == "cpu"
        threads = resolve_threads(self.threads) if cpu else (1 if self.threads == "auto" else self.threads)
        return dataclasses.replace(
            self,
            threads=threads,
            segments=DEFAULT_SEGMENTS if self.segments == "auto" else self.segments,
            row_block=(ROW_BLOCK_CPU if cpu else None) if self.row_block == "auto" else self.row_block,
            shapes=("bucket" if cpu else "single") if self.shapes == "auto" else self.shapes,
            window_multiple=(1 if cpu else 4) if self.window_multiple == "auto" else self.window_multiple,
        )

    def bucket_or(self, default: int) -> int:
        """`bucket`, or `default` (the caller's: 1 for one prompt, 4 for a dataset) when unset."""
        return default if self.bucket is None else self.bucket


def _check_positive(name: str, value: object, allowed: tuple) -> None:
    """`value` is one of `allowed` or a positive int, else a one-line `InputError`."""
    if (value is None and None in allowed) or (isinstance(value, str) and value in allowed):
        return
    if type(value) is not int or value < 1:
        choices = ", ".join([*(repr(a) for a in allowed), "a positive int"])
        raise InputError(f"execution {name} must be {choices}; got {value!r}")
