"""`jaxedit.runtime.side_by_side`: independent calls run at once from host threads, results in order."""

from __future__ import annotations

import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import pytest
from conftest import subprocess_env

from jaxedit.runtime import execution, side_by_side


def test_results_come_back_in_call_order() -> None:
    calls = [lambda i=i: jnp.full((2,), i) * 2 for i in range(5)]
    results = side_by_side.run_side_by_side(calls, threads=2)
    assert [int(r[0]) for r in results] == [0, 2, 4, 6, 8]


def test_two_threads_run_two_calls_at_once_and_one_thread_does_not() -> None:
    def waiting_call(barrier: threading.Barrier):
        def call():
            barrier.wait()  # returns only when both calls are inside it at the same time
            return jnp.ones(1)

        return call

    barrier = threading.Barrier(2, timeout=10)
    side_by_side.run_side_by_side([waiting_call(barrier)] * 2, threads=2)
    barrier = threading.Barrier(2, timeout=0.5)
    with pytest.raises(threading.BrokenBarrierError):
        side_by_side.run_side_by_side([waiting_call(barrier)] * 2, threads=1)


def test_an_exception_in_a_call_reaches_the_caller() -> None:
    def failing():
        raise RuntimeError("grid failed")

    with pytest.raises(RuntimeError, match="grid failed"):
        side_by_side.run_side_by_side([lambda: jnp.ones(1), failing], threads=2)


def test_thread_counts() -> None:
    single = jax.device_count() == 1
    expected = min(execution.CPU_THREADS, execution.cpu_cores()) if single else 1
    assert execution.default_threads() == expected
    assert execution.resolve_threads("auto") == execution.default_threads()
    assert execution.resolve_threads(3) == 3
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="threads"):
            execution.resolve_threads(bad)
    with pytest.raises(ValueError, match="threads"):
        side_by_side.run_side_by_side([], threads=0)


def test_several_devices_default_to_one_thread() -> None:
    # programs over several devices carry collectives: they run one at a time
    code = "from jaxedit.runtime import execution; print(execution.default_threads())"
    env = subprocess_env(devices=4)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def test_several_threads_under_several_processes_are_refused(monkeypatch) -> None:
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert execution.resolve_threads(1) == 1
    with pytest.raises(ValueError, match="single process"):
        execution.resolve_threads(2)
