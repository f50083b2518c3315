"""Dataset readers and the small built-in fact set used by the demo."""

from __future__ import annotations

import json
from importlib import resources


def demo_facts() -> list[dict]:
    """The built-in demo facts: `{"prompt", "subject", "answer"}` records the demo model knows."""
    return json.loads(resources.files(__package__).joinpath("demo_facts.json").read_text())
