"""`plan`: the papers' models compiled on a simulated 8-device mesh without weights; matrix FLOP counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from conftest import subprocess_env

from jaxedit import cli
from jaxedit.scale import presets
from jaxedit.scale.flops import matmul_flops


def run_check(*presets_: str) -> str:
    env = subprocess_env(devices=8)
    script = Path(__file__).with_name("plan_check.py")
    done = subprocess.run([sys.executable, str(script), *presets_], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow  # a subprocess of tens of seconds: the second stage
def test_neox_20b_plans_on_8_devices_and_the_planned_forward_runs() -> None:
    out = run_check("neox-20b")  # the largest preset; GPT-J's shape rules run in the small forward check
    assert "planned forward == unsharded forward" in out


def test_matmul_flops_count_loops_at_their_trip_counts() -> None:
    def f(x):
        y, _ = jax.lax.scan(lambda c, _: (c @ c, None), x, None, length=3)
        y = jax.lax.while_loop(lambda s: s[0] < 5, lambda s: (s[0] + 1, s[1] @ s[1]), (0, y))[1]
        return jnp.linalg.solve(y, y)

    n = 4
    expected = 2 * n**3 * (3 + 5) + 2 / 3 * n**3 + 2 * n * n * n  # scan, while, LU, two triangular solves
    assert matmul_flops(f, jax.ShapeDtypeStruct((n, n), jnp.float32), while_trips=5) == pytest.approx(
        expected
    )


def test_cli_plan_writes_json_for_a_config_file(tmp_path, capsys) -> None:
    small = dict(presets.HF_CONFIGS["llama2-7b"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=256)  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(small))
    out = tmp_path / "plan.json"
    assert cli.main(["plan", str(tmp_path), "--devices", "1", "--edits", "20", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["programs"]) == {"forward", "trace", "rome", "mass"} and result["edits"] == 20
    assert result["per_device_param_bytes"] == 2 * result["params"]
    assert "peak GiB/device" in capsys.readouterr().out
    assert cli.main(["plan", "gptj-7b"]) == 2
