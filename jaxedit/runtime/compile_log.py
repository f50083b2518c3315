"""Counting what a piece of work compiles: programs, their compile seconds, persistent-cache hits.

Compile time is a cost users feel on every first call and new shape (DESIGN.md, principle 8), so the
benchmarks and the command line report it: `with compile_log() as log: ...` records every XLA backend
compile in the block (the function's name and seconds, from JAX's monitoring events) and every program
served from the persistent compile cache instead (`jaxedit.runtime.compile_cache`). Recording is process-wide:
compiles made by other threads while the block runs are counted too (the side-by-side grid programs of
`jaxedit.runtime.side_by_side` are meant to be).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator

import jax.monitoring

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class CompileLog:
    """Compiles seen in a `compile_log()` block.

    Attributes:
      compiles: `(function name, seconds)` per program compiled by XLA, in order.
      cached: `(function name, seconds)` per program loaded from the persistent compile cache instead.
    """

    compiles: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    cached: list[tuple[str, float]] = dataclasses.field(default_factory=list)

    @property
    def programs(self) -> int:
        """Programs compiled (not loaded from the cache)."""
        return len(self.compiles)

    @property
    def cache_hits(self) -> int:
        return len(self.cached)

    @property
    def seconds(self) -> float:
        """Compile seconds summed over programs (wall time is less when they compile side by side)."""
        return sum(s for _, s in self.compiles)

    def by_name(self) -> dict[str, tuple[int, float]]:
        """`name -> (programs, seconds)` of the compiled programs, slowest first."""
        out: dict[str, tuple[int, float]] = {}
        for name, seconds in self.compiles:
            count, total = out.get(name, (0, 0.0))
            out[name] = (count + 1, total + seconds)
        return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))

    def summary(self) -> str:
        """One line: programs, seconds, cache hits, the slowest programs."""
        slowest = ", ".join(f"{name} {n}x {s:.1f} s" for name, (n, s) in list(self.by_name().items())[:4])
        return (
            f"{self.programs} programs compiled in {self.seconds:.1f} s (summed), {self.cache_hits} loaded "
            f"from the compile cache" + (f"; slowest: {slowest}" if slowest else "")
        )


@contextlib.contextmanager
def compile_log() -> Iterator[CompileLog]:
    """Record the compiles of the block (see the module docstring).

    JAX times a program's compile request as one event whether XLA compiles it or the persistent cache
    serves it; the cache's hit event comes first, on the same thread, and marks the request as cached.
    """
    log = CompileLog()
    lock = threading.Lock()
    hit = threading.local()

    def on_duration(event: str, seconds: float, **kwargs: object) -> None:
        if event == COMPILE_EVENT:
            entry = (str(kwargs.get("fun_name", "?")), float(seconds))
            with lock:
                (log.cached if getattr(hit, "pending", False) else log.compiles).append(entry)
            hit.pending = False

    def on_event(event: str, **kwargs: object) -> None:
        if event == CACHE_HIT_EVENT:
            hit.pending = True

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    try:
        yield log
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)
