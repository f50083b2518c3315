"""Two processes × 4 simulated CPU devices under `jax.distributed`: sharded forward, trace sweep and a
MEMIT batch equal the single-process results (tools/launch_local.py + tools/multiprocess_check.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]


def test_forward_trace_and_memit_across_two_processes(tiny_dirs) -> None:
    env = subprocess_env()  # launch_local gives each process its own simulated devices
    command = [
        sys.executable, str(ROOT / "tools" / "launch_local.py"), "--processes", "2", "--timeout", "500",
        str(ROOT / "tools" / "multiprocess_check.py"), "--cpu-devices", "4", str(tiny_dirs["llama_gqa_untied"]),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=560)
    assert done.returncode == 0, done.stdout + done.stderr
    for what in ("forward", "trace", "memit"):
        assert done.stdout.count(f"OK {what} ") == 2, done.stdout


def test_bad_process_id_is_refused() -> None:
    from jaxedit import distributed

    with pytest.raises(ValueError, match="process_id"):
        distributed.initialize("localhost:1", 2, 2)
