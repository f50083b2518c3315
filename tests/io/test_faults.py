"""A statistics run, a MEMIT target store and an evaluation killed with SIGKILL at random points and
run again give the results of an uninterrupted run (issue 34, fault test)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env
from fault_work import WORK

import jaxedit
from jaxedit.io.cache import load_npz

pytestmark = pytest.mark.slow  # subprocesses end to end: the second stage (`make test-slow`)

HERE = Path(__file__).parent


def units_done(kind: str, place: Path) -> int:
    """Units of work the killed process has persisted so far."""
    if kind == "stats":
        partials = list((place / "stats").glob("*.partial.npz")) if (place / "stats").exists() else []
        entry = load_npz(partials[0]) if partials else None
        return int(entry[1]["done"]) if entry is not None else 0
    if kind == "targets":
        return len(list(place.glob("*/*.npz")))
    cases = place / "out" / "cases"
    return len(list(cases.glob("*.json"))) if cases.exists() else 0


def kill_after(kind: str, model_dir: Path, place: Path, units: int, delay: float) -> None:
    """Run the workload in a subprocess and SIGKILL it `delay` seconds after `units` units are persisted."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "fault_work.py"), kind, str(model_dir), str(place)],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while units_done(kind, place) < units:
        if process.poll() is not None:
            raise AssertionError(
                f"{kind} ended before it was killed: {process.stderr.read().decode()[-2000:]}"
            )
        assert time.monotonic() < deadline, f"{kind} made no progress"
        time.sleep(0.005)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


@pytest.mark.parametrize("kind", ["stats", "targets", "eval"])
def test_killed_and_rerun_equals_uninterrupted(kind: str, tiny_dirs, tmp_path) -> None:
    model_dir = tiny_dirs["llama_gqa_untied"]
    model = jaxedit.load_model(model_dir)
    expected = WORK[kind](model, tmp_path / "whole")
    rng = np.random.default_rng(0)
    points = (3, 25) if kind == "stats" else (1, 4)  # of 40 batches / 6 groups / 6 cases: early and late
    for i, units in enumerate(points):
        place = tmp_path / f"killed{i}"
        kill_after(kind, model_dir, place, units, delay=float(rng.uniform(0, 0.15)))
        assert units_done(kind, place) >= units
        got = WORK[kind](model, place)
        if kind == "eval":
            assert got == expected
        else:
            np.testing.assert_array_equal(got, expected)
