"""Sharded forward on an 8-device simulated CPU mesh equals unsharded (run in a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env


def test_sharded_forward_equals_unsharded_on_8_devices() -> None:
    env = subprocess_env(devices=8)
    script = Path(__file__).with_name("sharded_check.py")
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    print(result.stdout, result.stderr[-3000:])
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "does not divide evenly" in result.stdout
    assert result.stdout.strip().endswith("OK")


@pytest.mark.slow  # a subprocess of tens of seconds: the second stage
def test_sharded_pmet_batch_equals_unsharded_on_8_devices() -> None:
    env = subprocess_env(devices=8)
    script = Path(__file__).with_name("sharded_pmet_check.py")
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    print(result.stdout, result.stderr[-3000:])
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")


def test_streaming_load_places_each_parameter_into_its_sharding(tmp_path) -> None:
    env = subprocess_env(devices=8)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    script = Path(__file__).with_name("streaming_check.py")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK") and result.stdout.count("logits |diff|") == 7
