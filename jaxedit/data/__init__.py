"""Dataset readers and the small built-in fact set used by the demo."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from jaxedit.data.records import read_records

__all__ = ["demo_counterfact_path", "demo_facts", "read_records"]


def demo_facts() -> list[dict]:
    """The built-in demo facts: `{"prompt", "subject", "answer"}` records the demo model knows."""
    return json.loads(resources.files(__package__).joinpath("demo_facts.json").read_text())


def demo_counterfact_path() -> Path:
    """The project's own small CounterFact-format file (ROME layout, 8 records) for the demo."""
    return Path(str(resources.files(__package__).joinpath("demo_counterfact.json")))
