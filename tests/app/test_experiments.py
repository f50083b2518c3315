"""The experiment scripts run end to end on a tiny model (`--model`), writing their results where
`JAXEDIT_EXPERIMENT_RESULTS` points and leaving the committed results alone."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
COMMITTED = ROOT / "experiments" / "results"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (SHARED / "counterfact_easyedit").exists() or not (SHARED / "corpus" / "wikipedia").exists(),
        reason="../shared/data (CounterFact, Wikipedia corpus) not present",
    ),
]


def _digests() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in COMMITTED.glob("*.json")}


@pytest.mark.parametrize(
    ("script", "methods"), [("rome_counterfact", ("rome", "ft-l")), ("mass_counterfact", ("memit",))]
)
def test_experiment_runs_on_a_tiny_model(script, methods, tiny_dirs, tmp_path) -> None:
    before = _digests()
    env = dict(
        subprocess_env(),
        JAXEDIT_EXPERIMENT_RESULTS=str(tmp_path / "results"),
        JAXEDIT_EXPERIMENT_CACHE=str(tmp_path / "cache"),
    )
    command = [sys.executable, f"{script}.py", "--model", str(tiny_dirs["llama_gqa_untied"]), "--n", "2",
               "--stats-samples", "8", "--generation-tokens", "0", "--methods", ",".join(methods)]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT / "experiments", env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results" / f"{script}.json").read_text())
    for method in ("unedited", *methods):
        assert results[method]["n"] == 2 and 0 <= results[method]["ES"] <= 100
    text = (tmp_path / "results" / f"{script}.md").read_text()
    assert "llama_gqa_untied (llama, 3 layers)" in text and "SmolLM2-135M" not in text  # names its model
    assert _digests() == before
