"""Heatmaps of restore grids (Meng et al. 2022 Fig. 1 / Liu et al. 2024 Fig. 3 style): one panel per kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

KIND_TITLES = {
    "hidden": "hidden state h[l]",
    "mlp": "MLP output (window)",
    "attn": "attention output (window)",
}
KIND_CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}


def _heatmap(fig: Any, ax: Any, grid: np.ndarray, cmap: str, vmin: float, labels: list[str]) -> Any:
    """One panel: rows labelled top-down, layers across (at most 7 layer ticks, at round steps), with a
    colour bar."""
    image = ax.pcolormesh(grid, cmap=cmap, vmin=vmin)
    ax.invert_yaxis()
    ax.set_yticks(np.arange(len(labels)) + 0.5, labels, fontsize=8)
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100) if -(-grid.shape[1] // s) <= 7)
    ax.set_xticks(np.arange(0, grid.shape[1], step) + 0.5, [str(i) for i in range(0, grid.shape[1], step)])
    ax.set_xlabel("layer")
    return fig.colorbar(image, ax=ax, fraction=0.05)


def _panels(n_panels: int, height: float) -> tuple[Any, Any]:
    """A figure of `n_panels` side by side (matplotlib's file-only backend unless one is chosen)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, height), squeeze=False)
    return fig, axes[0]


def _finish(fig: Any, title: str, path: str | Path | None) -> Any:
    """Title the figure and, when `path` is given, write it there atomically and release it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        _save(fig, Path(path))
        plt.close(fig)
    return fig


def plot_trace(result: Any, path: str | Path | None = None):
    """Draw `result.grids` as heatmaps (tokens down, layers across); corrupted tokens get a `*`.

    Colour is the answer probability with the cell restored, from `P_corrupt` upwards. Saved to `path`
    (written atomically) when given; the matplotlib figure is returned.
    """
    kinds = list(result.grids)
    fig, axes = _panels(len(kinds), 0.9 + 0.32 * len(result.tokens))
    labels = [f"{t!r}{'*' if c else ''}" for t, c in zip(result.tokens, result.corrupted, strict=True)]
    for ax, kind in zip(axes, kinds, strict=True):
        grid = np.asarray(result.grids[kind]).T  # [T, L]
        vmin = min(result.p_corrupt, grid.min())
        bar = _heatmap(fig, ax, grid, KIND_CMAPS.get(kind, "viridis"), vmin, labels)
        window = "" if kind == "hidden" else f", window {result.window}"
        ax.set_title(f"restoring {KIND_TITLES.get(kind, kind)}{window}", fontsize=9)
        if result.subject_span is not None:
            lo, hi = result.subject_span
            ax.axhline(lo, color="k", lw=0.6, ls="--")
            ax.axhline(hi, color="k", lw=0.6, ls="--")
        bar.set_label(f"p({result.answer.strip()!r})", fontsize=8)
    title = (
        f"{result.prompt!r} -> {result.answer!r}  (p clean {result.p_clean:.3f}, corrupted {result.p_corrupt:.3f}, "
        f"{result.corruption} noised)"
    )
    return _finish(fig, title, path)


def _save(fig: Any, path: Path) -> None:
    import io

    from jaxedit.io.files import write_output

    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    write_output(path, buffer.getvalue())


def plot_average(summary: Any, path: str | Path | None = None):
    """Average indirect effect heatmaps by token class (Meng et al. 2022 Fig. 3 / Liu et al. 2024 Fig. 3 style)."""
    kinds = list(summary.aie)
    fig, axes = _panels(len(kinds), 1.2 + 0.35 * len(summary.classes))
    for ax, kind in zip(axes, kinds, strict=True):
        grid = np.nan_to_num(np.asarray(summary.aie[kind], float).T)  # [classes, L]
        labels = [f"{c} ({n})" for c, n in zip(summary.classes, summary.counts, strict=True)]
        _heatmap(fig, ax, grid, KIND_CMAPS.get(kind, "viridis"), min(0.0, grid.min()), labels)
        sever = f", severed {summary.sever}" if summary.sever and kind == "hidden" else ""
        ax.set_title(f"average indirect effect: {KIND_TITLES.get(kind, kind)}{sever}", fontsize=9)
    title = (
        f"{summary.model}: {summary.n_facts} facts, {summary.corruption} corrupted, {summary.samples} samples "
        f"(p clean {summary.p_clean:.3f}, corrupted {summary.p_corrupt:.3f})"
    )
    return _finish(fig, title, path)
