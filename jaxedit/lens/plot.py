"""Figures of the lens analyses (Liu et al. 2024 Fig. 2 and Li et al. 2024 Fig. 2 shapes), written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from jaxedit.io.files import write_output


def _save(fig: Any, path: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_output(Path(path), buffer.getvalue())
    return Path(path)


def plot_relation(result: dict[str, Any], path: str | Path, blocking: dict[str, Any] | None = None) -> Path:
    """Attribute rate per layer (bars), object and random-token ranks (lines, log scale), and the
    blocking drops when given."""
    layers = list(range(result["layers"]))
    panels = 3 if blocking else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.4))
    axes[0].bar(layers, result["attribute_rate"], color="#d9a400")
    axes[0].set(xlabel="layer", ylabel="attribute rate", title=f"attribute rate ({result['facts']} facts)")
    axes[1].plot(layers, result["object_rank"], marker=".", label="predicted object")
    axes[1].plot(layers, result["random_rank"], marker=".", label="random token")
    axes[1].set(
        xlabel="layer", ylabel="mean lens rank", yscale="log", title=f"rank flow (ρ = {result['rho']:.2f})"
    )
    axes[1].invert_yaxis()
    axes[1].legend(fontsize=8)
    if blocking:
        for name, drops in blocking["drop"].items():
            axes[2].plot(layers, drops, marker=".", label=f"block {name.upper()}")
        axes[2].set(
            xlabel=f"first blocked layer (window {blocking['window']})", ylabel="drop of final attribute rate",
            title="sublayer blocking",
        )  # fmt: skip
        axes[2].legend(fontsize=8)
    return _save(fig, path)


def plot_probes(result: dict[str, Any], path: str | Path) -> Path:
    """Cosine and Jaccard of the last token's state before / after attention and the MLP, per layer."""
    layers = list(range(result["layers"]))
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 3.4))
    for ax, metric in zip(axes, ("cosine", "jaccard"), strict=True):
        ax.plot(layers, result[f"attn_{metric}"], marker=".", label="MHSA")
        ax.plot(layers, result[f"mlp_{metric}"], marker=".", label="FFN")
        ax.set(xlabel="layer", title=f"{metric} before vs after ({result['prompts']} prompts)")
        ax.legend(fontsize=8)
    return _save(fig, path)
