"""Shared pieces of the experiment scripts: data paths, machine description, markdown tables."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("JAXEDIT_SHARED", ROOT.parent / "shared"))
RESULTS = ROOT / "experiments" / "results"
# per-fact caches of resumable runs (outside the repository when JAXEDIT_EXPERIMENT_CACHE is set)
CACHE = Path(os.environ.get("JAXEDIT_EXPERIMENT_CACHE", RESULTS / ".cache"))


def write_text(path: Path, text: str) -> None:
    """Write a results file atomically."""
    from jaxedit.checkpoints import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())


def shared_data(*parts: str) -> Path:
    path = SHARED.joinpath("data", *parts)
    if not path.exists():
        raise SystemExit(f"{path} not found: set JAXEDIT_SHARED to the folder holding data/")
    return path


def machine() -> str:
    import jax

    device = jax.devices()[0]
    return f"{platform.machine()} {os.cpu_count()} CPU cores, jax {jax.__version__} on {device.platform} ({device.device_kind})"


def aie_table(summary, kind: str) -> str:
    """Markdown table: per token class, peak layer, peak AIE and mean AIE over layers."""
    lines = [
        "| token class | facts | peak layer | peak AIE | mean AIE over layers |",
        "|---|---|---|---|---|",
    ]
    grid = summary.aie[kind]
    for c, cls in enumerate(summary.classes):
        column = grid[:, c]
        if np.all(np.isnan(column)):
            lines.append(f"| {cls} | 0 | - | - | - |")
            continue
        layer = int(np.nanargmax(column))
        lines.append(
            f"| {cls} | {summary.counts[c]} | {layer} | {column[layer]:.4f} | {np.nanmean(column):.4f} |"
        )
    return "\n".join(lines)
