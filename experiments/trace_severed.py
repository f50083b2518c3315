"""Severed causal tracing (Wei et al. 2024 §3; Meng et al. 2022 appendix): hidden-state restoration with the MLP or
attention of later layers pinned to their corrupted values.

SmolLM2-135M on `data/rets/known_1000.json` (facts it predicts correctly), relation tokens corrupted as in
Wei et al. 2024, hidden restorations without severing, with the MLP severed and with attention severed
(10 samples, 3 sigma). The gap between the unsevered and the severed curves at a position shows how much
of the restored state's effect flows through that sublayer. Writes
`experiments/results/trace_severed.{json,md,png}`.

    python experiments/trace_severed.py [--n 50] [--corrupt relation|subject]
"""

from __future__ import annotations

import dataclasses
import json

import common
import numpy as np

from jaxedit.trace import trace_dataset
from jaxedit.trace.dataset import DatasetTrace

NAME = "trace_severed"


def main() -> None:
    parser = common.trace_parser(__doc__)
    parser.add_argument("--corrupt", default="relation", choices=["relation", "subject"])
    args, model, records = common.trace_start(parser)
    options = common.dataset_options(args)
    budget = options.pop("max_seconds")
    base_noise = options.pop("noise")

    def run(sever: str | None, n: int, scale: str | float, seconds: float | None) -> DatasetTrace:
        return trace_dataset(
            model, records, corrupt=args.corrupt, kinds=("hidden",), sever=sever,
            noise=dataclasses.replace(base_noise, scale=scale),
            max_seconds=seconds, out_dir=common.CACHE / f"{NAME}-{args.corrupt}-{sever or 'none'}",
            **{**options, "n": n},
        )  # fmt: skip

    # The unsevered run fixes the facts and the noise scale (3 sigma over its known facts); the severed
    # runs trace the same facts at the same scale. Under a time budget (a third per run) every curve is
    # then averaged over the facts all three runs reached, which their caches hold.
    third = None if budget is None else budget / 3
    first = run(None, args.n, "3sigma", third)
    scale, known = first.noise_scale, first.n_facts + first.n_untraced
    runs = {"none": first}
    runs |= {sever: run(sever, first.n_facts, scale, third) for sever in ("mlp", "attn")}
    shared_n = min(r.n_facts for r in runs.values())
    if any(r.n_facts != shared_n for r in runs.values()):
        runs = {label: run(None if label == "none" else label, shared_n, scale, None) for label in runs}
    first = runs["none"]
    reached = (
        ""
        if budget is None
        else f" Under the time budget ({args.max_minutes} min, a third per run) all three runs reached the "
        f"first {shared_n} of the {known} known facts asked for."
    )
    classes = first.classes
    curves = {label: run.aie["hidden"] for label, run in runs.items()}
    payload = {
        "corruption": args.corrupt,
        "classes": classes,
        "n_facts": first.n_facts,
        "n_filtered": first.n_filtered,
        "samples": first.samples,
        "seconds": sum(r.seconds for r in runs.values()),
        "aie_hidden": {k: np.where(np.isnan(v), None, v.round(7)).tolist() for k, v in curves.items()},
    }
    common.write_text(common.RESULTS / f"{NAME}.json", json.dumps(payload, indent=1))
    _plot(curves, classes, first, common.RESULTS / f"{NAME}.png", model.config.n_layers)
    rows = [
        "| position | no severing: mean / peak AIE | MLP severed | attention severed |",
        "|---|---|---|---|",
    ]
    for c, cls in enumerate(classes):
        cells = []
        for label in ("none", "mlp", "attn"):
            col = curves[label][:, c]
            cells.append("-" if np.all(np.isnan(col)) else f"{np.nanmean(col):.4f} / {np.nanmax(col):.4f}")
        rows.append(f"| {cls} | " + " | ".join(cells) + " |")
    last = classes[-1]
    drop = {label: np.nanmean(curves[label][:, -1]) for label in curves}
    share = {label: 100 * (1 - drop[label] / drop["none"]) for label in ("mlp", "attn")}
    md = f"""# Severed causal tracing (Wei et al. 2024 §3)

Model: {common.model_label()}, float32. {first.n_facts} correctly predicted facts of `known_1000.json`
({first.n_filtered} of the first {first.n_considered} filtered out).{reached} {args.corrupt.capitalize()} tokens noised
({first.samples} samples, 3 sigma); hidden state restored at each (layer, token), optionally with the MLP or
the attention of all later layers of that token frozen to the corrupted run. Total run time
{payload["seconds"] / 60:.1f} min on {common.machine()}. Produced by
`{common.command(NAME, args, corrupt=args.corrupt)}`.

![severed traces]({NAME}.png)

{chr(10).join(rows)}

At the last token (`{last}`), severing the MLP changes the mean hidden-state AIE from {drop["none"]:.4f} to
{drop["mlp"]:.4f} ({share["mlp"]:.0f} % of it depends on the later MLPs) and severing attention to
{drop["attn"]:.4f} ({share["attn"]:.0f} % depends on the later attention layers).

Wei et al. 2024 (GPT-2 XL, GPT-J) concludes that with the relation corrupted the effect at the last relation
token runs through both the MLP and the attention layers, unlike entity (subject) knowledge, which
ROME traced to the MLPs. Here both severings lower it too: the MLPs carry the larger part, attention a
substantial one.
"""
    common.write_text(common.RESULTS / f"{NAME}.md", md)
    print(md)


def _plot(curves, classes, first, path, n_layers) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxedit.trace.plot import _save

    last = len(classes) - 1
    means = [
        np.nanmean(curves["none"][:, c]) if c != last and np.isfinite(curves["none"][:, c]).any() else -1.0
        for c in range(last)
    ]
    picks = [last, int(np.argmax(means))]  # the last token and the strongest other position
    fig, axes = plt.subplots(1, len(picks), figsize=(5 * len(picks), 3.2), squeeze=False)
    for ax, c in zip(axes[0], picks, strict=True):
        for label, style in (("none", "-"), ("mlp", "--"), ("attn", ":")):
            ax.plot(range(n_layers), curves[label][:, c], style, label=f"severed: {label}")
        ax.set_title(f"hidden-state AIE at '{classes[c]}' ({first.n_facts} facts)", fontsize=9)
        ax.set_xlabel("layer")
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
