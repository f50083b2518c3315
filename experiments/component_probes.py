"""PMET's component probes on SmolLM2 (Li et al. 2024 §3, Fig. 2 shape): how much MHSA and FFN change the last
token's hidden state per layer.

Prompts: all of `rets/known_1000.json` (1,209 facts, as the paper). Per layer, cosine similarity of the
last token's residual before and after attention and before and after the MLP, and the Jaccard overlap of
their top-50 lens tokens. Writes `experiments/results/component_probes.{json,md,png}`.

    python experiments/component_probes.py [--n 1209]
"""

from __future__ import annotations

import json
import time

import common
import numpy as np

from jaxedit.lens import component_probes, read_lens_facts
from jaxedit.lens.plot import plot_probes

NAME = "component_probes"


def main() -> None:
    parser = common.experiment_parser(__doc__, n=None)
    args = parser.parse_args()
    start, model = common.begin(args)
    facts = read_lens_facts(common.shared_data("rets", "known_1000.json"))[: args.n]
    result = component_probes(model, [f.prompt for f in facts])
    seconds = round(time.perf_counter() - start)
    common.write_text(
        common.RESULTS / f"{NAME}.json",
        json.dumps({**result, "seconds": seconds, "machine": common.machine()}, indent=1),
    )
    plot_probes(result, common.RESULTS / f"{NAME}.png")
    half = result["layers"] // 2
    summary = {
        k: (float(np.mean(result[k][:half])), float(np.mean(result[k][half:])))
        for k in ("attn_cosine", "mlp_cosine", "attn_jaccard", "mlp_jaccard")
    }
    rows = ["| layer | MHSA cosine | FFN cosine | MHSA Jaccard | FFN Jaccard |", "|---|---|---|---|---|"]
    for layer in range(result["layers"]):
        rows.append(
            f"| {layer} | {result['attn_cosine'][layer]:.3f} | {result['mlp_cosine'][layer]:.3f} | "
            f"{result['attn_jaccard'][layer]:.3f} | {result['mlp_jaccard'][layer]:.3f} |"
        )
    lines = "\n".join(
        f"- {k.replace('_', ' ')}: layers 0-{half - 1} {a:.3f}, layers {half}-{result['layers'] - 1} {b:.3f}"
        for k, (a, b) in summary.items()
    )
    (mlp_early, mlp_late), attn_late = summary["mlp_cosine"], summary["attn_cosine"][1]
    verdict = (
        f"On SmolLM2 the FFN's before/after cosine {'rises' if mlp_late > mlp_early else 'falls'} from the first to the "
        f"second half ({mlp_early:.3f} → {mlp_late:.3f}: it changes the state {'less' if mlp_late > mlp_early else 'more'} "
        f"later, {'as' if mlp_late > mlp_early else 'unlike'} the paper's FFN), and in the second half MHSA changes the "
        f"state {'more' if attn_late < mlp_late else 'less'} than the FFN ({attn_late:.3f} vs {mlp_late:.3f} cosine; the "
        f"paper finds MHSA keeps changing it more). By the lens tokens (Jaccard), the FFN's overlap is "
        f"{summary['mlp_jaccard'][0]:.3f} → {summary['mlp_jaccard'][1]:.3f} and MHSA's "
        f"{summary['attn_jaccard'][0]:.3f} → {summary['attn_jaccard'][1]:.3f}."
    )
    md = f"""# Component probes (SmolLM2)

Model: {common.model_label()}, float32. Prompts: {len(facts)} of `rets/known_1000.json`, last token. Top-50
lens tokens. Run time {seconds} s on {common.machine()}. Produced by `python experiments/{NAME}.py`.

Li et al. 2024 Fig. 2 (GPT-J): after the first ~15 layers the FFN changes the hidden state less and less (its
before/after similarity rises and stabilises) while MHSA keeps changing it. Means over the two halves of
SmolLM2's layers:

{lines}

{verdict}

{chr(10).join(rows)}

![probes]({NAME}.png)
"""
    common.write_text(common.RESULTS / f"{NAME}.md", md)
    print(md)


if __name__ == "__main__":
    main()
