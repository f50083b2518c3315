"""Two processes × 4 simulated CPU devices under `jax.distributed`: sharded forward, trace sweep and a
MEMIT batch equal the single-process results (tools/launch_local.py + tools/multiprocess_check.py), and
the edited model and its statistics, saved as orbax checkpoints from both processes, restore in one
process on other meshes (tests/scale/sharded_checkpoint_check.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # subprocesses end to end: the second stage (`make test-slow`)


@pytest.fixture(scope="module")
def two_processes(tiny_dirs, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The 2-process check's run, and the directory it saved its checkpoints in."""
    saved = tmp_path_factory.mktemp("two-processes")
    env = subprocess_env()  # launch_local gives each process its own simulated devices
    command = [
        sys.executable, str(ROOT / "tools" / "launch_local.py"), "--processes", "2", "--timeout", "500",
        str(ROOT / "tools" / "multiprocess_check.py"), "--cpu-devices", "4", str(tiny_dirs["llama_gqa_untied"]),
        "--save", str(saved),
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=560), saved


def test_forward_trace_and_memit_across_two_processes(two_processes) -> None:
    done, _ = two_processes
    assert done.returncode == 0, done.stdout + done.stderr
    for what in ("forward", "trace", "memit", "edited forward", "save"):
        assert done.stdout.count(f"OK {what} ") == 2, done.stdout


def test_checkpoint_saved_by_two_processes_restores_on_other_meshes(two_processes, tmp_path) -> None:
    done, saved = two_processes
    assert done.returncode == 0, done.stdout + done.stderr
    script = Path(__file__).with_name("sharded_checkpoint_check.py")
    result = subprocess.run(
        [sys.executable, str(script), str(saved), str(tmp_path)],
        env=subprocess_env(devices=8), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK") and result.stdout.count("max |diff|") == 9, result.stdout


def test_bad_process_id_is_refused() -> None:
    from jaxedit.scale import distributed

    with pytest.raises(ValueError, match="process_id"):
        distributed.initialize("localhost:1", 2, 2)
