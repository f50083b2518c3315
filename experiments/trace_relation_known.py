"""Relation-corrupted causal tracing over known facts: Liu et al. 2024 Table 1 (AIER by position class).

SmolLM2-135M on `data/rets/known_1000.json`, facts it predicts correctly; noise on the relation tokens
(every token that is neither subject nor BOS), MLP and attention restorations (10 samples, 3 sigma,
window 10); AIER averaged by position class rp / fs / ms / ls / fr / mr / lr. Writes
`experiments/results/trace_relation_known.{json,md,png}` (per-fact cache under `results/.cache/`).

    python experiments/trace_relation_known.py [--n 50]
"""

from __future__ import annotations

import common
import numpy as np

from jaxedit.trace import suggest_edit_layer, trace_dataset

NAME = "trace_relation_known"
PAPER_GPT2XL = {"rp": 0.03, "fs": 0.04, "ms": 0.04, "ls": 0.04, "fr": 0.06, "mr": 0.06, "lr": 2.23}


def main() -> None:
    args, model, records = common.trace_start(common.trace_parser(__doc__))
    summary = trace_dataset(
        model, records, corrupt="relation", kinds=("mlp", "attn"), **common.dataset_options(args),
        out_dir=common.CACHE / NAME,
    )  # fmt: skip
    summary.save(common.RESULTS, NAME)
    layer, _ = suggest_edit_layer(model, summary, position="last_relation")
    rows = [
        "| position | facts | average AIER MLP (%) | average AIER attention (%) | paper GPT-2 XL MLP (%) |"
    ]
    rows.append("|---|---|---|---|---|")
    for c, cls in enumerate(summary.classes):
        mlp = np.nanmean(summary.aie["mlp"][:, c]) * 100 if summary.counts[c] else float("nan")
        attn = np.nanmean(summary.aie["attn"][:, c]) * 100 if summary.counts[c] else float("nan")
        rows.append(f"| {cls} | {summary.counts[c]} | {mlp:.3f} | {attn:.3f} | {PAPER_GPT2XL[cls]:.2f} |")
    means = {
        cls: np.nanmean(summary.aie["mlp"][:, c])
        for c, cls in enumerate(summary.classes)
        if summary.counts[c]
    }
    top = max(means, key=means.get)
    md = f"""# Relation-corrupted causal tracing over known facts (Liu et al. 2024 Table 1)

Model: {common.model_label()} ({model.config.n_layers} layers), float32. Data: `known_1000.json`, the
first {summary.n_considered} records, {summary.n_facts} predicted correctly and traced
({summary.n_filtered} filtered out).{common.untraced_note(summary)} Relation tokens noised ({summary.samples} samples, 3 sigma,
sigma = {summary.noise_scale / 3:.4f}); MLP and attention outputs restored over a window of
{summary.window} layers. Mean p(answer): clean {summary.p_clean:.3f}, corrupted {summary.p_corrupt:.3f}.
Run time {summary.seconds / 60:.1f} min on {common.machine()}. Produced by
`{common.command(NAME, args)}`.

![average indirect effects of relation]({NAME}.png)

## Average AIER over layers by position (the paper's Table 1 measure)

{chr(10).join(rows)}

The position with the largest average MLP AIER here is `{top}`; in the paper (GPT-2 XL, GPT-J, Llama-2)
it is `lr`, the last relation token, far above every other position. The MLP peak at the last relation
token is at layer {layer} of {model.config.n_layers} (relative depth {layer / model.config.n_layers:.2f});
the paper places the end of relation aggregation in middle-late layers (RETS edits GPT-2 XL layer 35 of 48,
depth 0.73), which is the RETS default-layer evidence for this model.

## MLP by layer
{common.aie_table(summary, "mlp")}

## Attention by layer
{common.aie_table(summary, "attn")}
"""
    common.write_text(common.RESULTS / f"{NAME}.md", md)
    print(md)


if __name__ == "__main__":
    main()
