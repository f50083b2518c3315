"""The documentation site: it builds with warnings as errors (links, the API reference from the
docstrings), and its Benchmarks page is generated from the committed benchmark JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "tools" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_strict(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "edit" / "index.html").read_text()
    assert "make_editor" in api and "Statistics" in api  # rendered from the registry's docstrings
    assert (tmp_path / "site" / "benchmarks" / "index.html").exists()


def test_benchmarks_page_has_one_row_per_committed_run_with_its_ratios(tmp_path) -> None:
    module = hooks()
    folder = ROOT / "experiments" / "results" / "bench_json"
    page, before_after = module.benchmarks_page(folder).split("## Before and after")
    table = [line.split(" | ") for line in page.splitlines() if line.startswith("| ") and "---" not in line][
        1:
    ]
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        mine = [row for row in table if row[1].split(":")[0] == path.stem]
        expected = len(record.get("candidates", record.get("rows", [None])))
        assert len(mine) == expected, path.name
        ratios = {float(row[7]) for row in mine}
        if "ratio" in record:
            assert round(record["ratio"], 2) in ratios
            # and in the run-after-run table, on its benchmark's row for its CPU
            (history,) = [
                line
                for line in before_after.splitlines()
                if line.startswith(f"| {record['benchmark']} | {record['cpu']} |")
            ]
            assert f"{path.stem}: {record['ratio']:.2f} / " in history
    # a new run's JSON becomes a new row, with its figures
    record = {"benchmark": "rome", "cpu": "Test CPU", "cores": 2, "jax": "0", "steady_s": 2.0,
              "reference_s": 6.0, "ratio": 3.0, "ratio_cold": 2.25}  # fmt: skip
    (tmp_path / "bench_rome_test.json").write_text(json.dumps(record))
    (row,) = module.rows("bench_rome_test", record)
    assert row[2] == "Test CPU" and row[5:9] == ["2.000", "6.000", "3.00", "2.25"]
    assert "| bench_rome_test |" in module.benchmarks_page(tmp_path)


def test_readme_stays_a_short_user_document() -> None:
    """The README is what a user reads first: at most 12 KB, the details in the docs site it links."""
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 12_000
    for page in ("docs/tracing.md", "docs/editing.md", "docs/performance.md", "docs/results.md"):
        assert f"]({page})" in text and (ROOT / page).exists()
