"""Sharded forward on an 8-device simulated CPU mesh equals unsharded (run in a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env


def _check(script: str, *args: str) -> str:
    """Run a check script of this folder on 8 simulated devices; its output, after it succeeded."""
    env = subprocess_env(devices=8)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    command = [sys.executable, str(Path(__file__).with_name(script)), *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return result.stdout.strip()


def test_sharded_forward_equals_unsharded_on_8_devices() -> None:
    out = _check("sharded_check.py")
    assert "does not divide evenly" in out and out.endswith("OK")


@pytest.mark.slow  # a subprocess of tens of seconds: the second stage
def test_sharded_pmet_batch_equals_unsharded_on_8_devices() -> None:
    assert _check("sharded_pmet_check.py").endswith("OK")


def test_streaming_load_places_each_parameter_into_its_sharding(tmp_path) -> None:
    out = _check("streaming_check.py", str(tmp_path))
    assert out.endswith("OK") and out.count("logits |diff|") == 7
