"""Dataset readers and the small built-in fact set used by the demo."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from jaxedit.errors import InputError


def demo_facts() -> list[dict]:
    """The built-in demo facts: `{"prompt", "subject", "answer"}` records the demo model knows."""
    return json.loads(resources.files(__package__).joinpath("demo_facts.json").read_text())


def demo_counterfact_path() -> Path:
    """The project's own small CounterFact-format file (ROME layout, 8 records) for the demo."""
    return Path(str(resources.files(__package__).joinpath("demo_counterfact.json")))


def read_records(path: str | Path) -> list[dict]:
    """Records of a JSON list file or a JSON-lines file, with clear errors for a missing or bad file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON: {err}") from err
    if isinstance(records, dict):
        records = list(records.values())
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InputError(f"{path} must hold a list of JSON objects")
    return records
