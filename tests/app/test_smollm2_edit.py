"""The CLI's ROME edit of the real embedded model (its own file so that `pytest --dist loadfile` can run it
beside the other SmolLM2 tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import requires_smollm2, subprocess_env

import jaxedit

pytestmark = [requires_smollm2, pytest.mark.slow]

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus" / "wikipedia"


@pytest.mark.skipif(not CORPUS.exists(), reason="../shared/data/corpus is absent")
def test_cli_rome_edit_moves_the_eiffel_tower_to_rome(tmp_path) -> None:
    """`jaxedit edit` in its own process (optimised XLA: the edit's running time outweighs its compiles);
    the model it saves answers Rome, also for a paraphrase, and keeps the Louvre in Paris."""
    paraphrase = "The Eiffel Tower, a famous landmark, is in the city of"
    unrelated = "The Louvre is in the city of"
    args = ["edit", "smollm2", "--prompt", "{} is located in the city of", "--subject", "The Eiffel Tower"]
    args += ["--target", "Rome", "--corpus", str(CORPUS), "--stats-samples", "100", "--max-new-tokens", "3"]
    args += ["--check", paraphrase, unrelated, "--save", str(tmp_path / "edited")]
    env = dict(subprocess_env(optimised=True), JAXEDIT_CACHE=str(tmp_path / "cache"))
    run = "import sys; from jaxedit.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", run, *args], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (tmp_path / "edited" / "journal" / "journal.json").exists()
    edited = jaxedit.load_model(tmp_path / "edited")
    prompts = ["The Eiffel Tower is located in the city of", paraphrase, unrelated]
    eiffel, again, louvre = jaxedit.generate_text(edited, prompts, max_new_tokens=2)
    assert eiffel.strip().startswith("Rome") and again.strip().startswith("Rome")
    assert louvre.strip().startswith("Paris")  # the Louvre stays in Paris
