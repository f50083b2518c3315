"""The CLI's ROME edit of the real embedded model (its own file so that `pytest --dist loadfile` can run it
beside the other SmolLM2 tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import requires_smollm2

from jaxedit import cli

pytestmark = [requires_smollm2, pytest.mark.slow]

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus" / "wikipedia"


@pytest.mark.skipif(not CORPUS.exists(), reason="../shared/data/corpus is absent")
def test_cli_rome_edit_moves_the_eiffel_tower_to_rome(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("JAXEDIT_CACHE", str(tmp_path / "cache"))
    paraphrase = "The Eiffel Tower, a famous landmark, is in the city of"
    unrelated = "The Louvre is in the city of"
    args = ["edit", "smollm2", "--prompt", "{} is located in the city of", "--subject", "The Eiffel Tower"]
    args += ["--target", "Rome", "--corpus", str(CORPUS), "--stats-samples", "100", "--max-new-tokens", "3"]
    args += ["--check", paraphrase, unrelated, "--save", str(tmp_path / "edited")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    blocks = {}
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("    before:"):
            blocks[lines[i - 1]] = (line, lines[i + 1])
    before, after = blocks["The Eiffel Tower is located in the city of"]
    assert "Paris" in before and "Rome" in after
    assert "Rome" in blocks[paraphrase][1]
    assert "Paris" in blocks[unrelated][1]  # the Louvre stays in Paris
    assert (tmp_path / "edited" / "model.safetensors").exists()
    assert (tmp_path / "edited" / "journal" / "journal.json").exists()
