"""The Python examples of the README and of docs/*.md run as written (8 simulated devices for the
sharding line); a block marked `<!-- readme-test: skip -->` is left out."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import requires_smollm2, subprocess_env

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@requires_smollm2
@pytest.mark.slow
def test_readme_python_example_runs(tmp_path: Path) -> None:
    pattern = r"(<!-- readme-test: skip[^>]*-->\n)?```python\n(.*?)```"
    blocks = [found for page in PAGES for found in re.findall(pattern, page.read_text(), flags=re.S)]
    blocks = [code for skip, code in blocks if not skip]
    assert blocks, "README has no Python example"
    env = subprocess_env(devices=8)
    for block in blocks:
        result = subprocess.run(
            [sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
