"""The README's Python examples run as written (8 simulated devices for the sharding line); a block
marked `<!-- readme-test: skip -->` is left out."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import requires_smollm2, subprocess_env

README = Path(__file__).parents[1] / "README.md"


@requires_smollm2
@pytest.mark.slow
def test_readme_python_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(
        r"(<!-- readme-test: skip[^>]*-->\n)?```python\n(.*?)```", README.read_text(), flags=re.S
    )
    blocks = [code for skip, code in blocks if not skip]
    assert blocks, "README has no Python example"
    env = subprocess_env(devices=8)
    for block in blocks:
        result = subprocess.run(
            [sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
