"""The notebooks: the quickstart executes headless top to bottom (small parameters), and the committed
notebooks carry the outputs of a real run without this machine's paths."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import requires_smollm2, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def runner():
    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "tools" / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_notebooks"] = module
    spec.loader.exec_module(module)
    return module


def printed(notebook) -> str:
    return "".join(
        o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )


def edit_lines(text: str) -> tuple[str, str]:
    """The before / after completions of the edit prompt itself."""
    match = re.search(r"in the city of\n\s+before: '([^']*)'\n\s+after:\s+'([^']*)'", text)
    assert match, text
    return match.group(1), match.group(2)


@requires_smollm2
@pytest.mark.slow
def test_quickstart_executes_and_moves_paris_to_rome(monkeypatch) -> None:
    # the kernel inherits this environment: optimised XLA, since the notebook's traces and edit on
    # SmolLM2 run longer than they compile
    monkeypatch.setenv("XLA_FLAGS", subprocess_env(optimised=True)["XLA_FLAGS"])
    values = {"TRACE_SAMPLES": 2, "LAYER_FACTS": 3, "STATS_TEXTS": 60}
    notebook = runner().execute(ROOT / "notebooks" / "quickstart.ipynb", values, timeout=600)
    text = printed(notebook)
    before, after = edit_lines(text)
    assert before.startswith(" Paris") and after.startswith(" Rome")
    assert "reverted: ' Paris" in text
    shown = {k for c in notebook.cells for o in c.get("outputs", []) for k in o.get("data", {})}
    assert {"image/png", "text/html"} <= shown  # the trace heatmaps and the delta's table


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_hold_outputs_without_local_paths(path) -> None:
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "run tools/run_notebooks.py before committing"
    outputs = nbformat.writes(notebook)
    for local in (str(ROOT), str(Path.home()), "/tmp/"):
        assert local not in outputs


def test_parameters_are_replaced_and_unknown_ones_refused() -> None:
    module = runner()
    notebook = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    module.set_parameters(notebook, {"TRACE_SAMPLES": 2})
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    assert "TRACE_SAMPLES = 2  # noise samples" in cell.source
    with pytest.raises(ValueError, match="not assigned"):
        module.set_parameters(notebook, {"NOT_A_PARAMETER": 1})
