"""The vocabulary lens at the last relation token on SmolLM2 (Liu et al. 2024 §4.2: Fig. 2 and Table 2 shapes).

Facts: `rets/known_1000.json` whose relation has attributes in `rets/relation_related_attributes.json`.
Per layer, at the last prompt token: the attribute rate of the top-50 lens tokens, the mean lens rank of
the model's predicted object token and of a random token, the Spearman correlation of the object's
negative rank with the attribute rate across layers, and the share of facts whose predicted object is
among the relation's attributes; then sublayer blocking (MLP or attention updates at the last token
zeroed for a window of layers) on the first `--blocking-n` facts. Writes
`experiments/results/relation_lens.{json,md,png}`.

    python experiments/relation_lens.py [--n 949] [--blocking-n 200]
"""

from __future__ import annotations

import json
import time

import common
import numpy as np

from jaxedit.lens import attribute_rate, read_attributes, read_lens_facts, sublayer_blocking
from jaxedit.lens.plot import plot_relation

NAME = "relation_lens"
PAPER = {"GPT-2 XL": {"objects_included": 68, "rho": 0.97}, "GPT-J": {"objects_included": 83, "rho": 0.73}}


def main() -> None:
    parser = common.experiment_parser(__doc__, n=None)
    parser.add_argument("--blocking-n", type=int, default=200)
    args = parser.parse_args()
    start, model = common.begin(args)
    attributes = read_attributes(common.shared_data("rets", "relation_related_attributes.json"))
    facts = [
        f for f in read_lens_facts(common.shared_data("rets", "known_1000.json")) if f.relation in attributes
    ][: args.n]
    result = attribute_rate(model, facts, attributes)
    result.pop("per_fact_rate")
    cache = common.CACHE / NAME / f"blocking-{args.blocking_n}.json"
    if not cache.exists():
        blocking = sublayer_blocking(model, facts[: args.blocking_n], attributes)
        common.write_text(cache, json.dumps(blocking))
    blocking = json.loads(cache.read_text())
    seconds = round(time.perf_counter() - start)
    settings = {
        "facts": len(facts),
        "blocking_facts": blocking["facts"],
        "seconds": seconds,
        "machine": common.machine(),
    }
    common.write_text(
        common.RESULTS / f"{NAME}.json",
        json.dumps({**result, "blocking": blocking, "settings": settings}, indent=1),
    )
    plot_relation(result, common.RESULTS / f"{NAME}.png", blocking)

    rate = np.asarray(result["attribute_rate"])
    peak = int(rate.argmax())
    plateau = int(np.argmax(rate >= rate[:-1].max() * 0.95))  # first layer within 5 % of the pre-output peak
    drops = {k: np.asarray(v) for k, v in blocking["drop"].items()}
    rows = [
        "| layer | attribute rate | object rank | random rank | drop (block MLP) | drop (block attention) |"
    ]
    rows.append("|---|---|---|---|---|---|")
    for layer in range(result["layers"]):
        rows.append(
            f"| {layer} | {rate[layer]:.3f} | {result['object_rank'][layer]:.0f} | {result['random_rank'][layer]:.0f} "
            f"| {drops['mlp'][layer]:.3f} | {drops['attn'][layer]:.3f} |"
        )
    paper = "; ".join(
        f"{m}: objects included {v['objects_included']} %, ρ {v['rho']}" for m, v in PAPER.items()
    )
    md = f"""# The lens at the last relation token (SmolLM2)

Model: {common.model_label()}, float32. Facts: {len(facts)} of `rets/known_1000.json` (those whose relation
has attributes); blocking on the first {blocking["facts"]}, window {blocking["window"]} layers (10 of GPT-2 XL's 48,
scaled). Top-{result["k"]} lens tokens. Run time {seconds / 60:.0f} min on {common.machine()}. Produced by
`python experiments/{NAME}.py --blocking-n {args.blocking_n}`.

- Spearman ρ between the mean negative rank of the predicted object and the mean attribute rate across
  layers: **{result["rho"]:.2f}**; predicted objects among their relation's attributes:
  **{100 * result["objects_included"]:.0f} %** (Liu et al. 2024 Table 2: {paper}).
- The attribute rate rises from {rate[0]:.3f} at layer 0 to {rate[:-1].max():.3f} (layer {int(rate[:-1].argmax())}) before the
  output layer, first within 5 % of that at layer {plateau}; it peaks at layer {peak} ({rate[peak]:.3f}).
- Blocking the MLP updates lowers the final attribute rate by {drops["mlp"].mean():.3f} on average over windows
  (largest {drops["mlp"].max():.3f}, window starting at layer {int(drops["mlp"].argmax())}); blocking attention by
  {drops["attn"].mean():.3f} (largest {drops["attn"].max():.3f}, at layer {int(drops["attn"].argmax())}). Liu et al. 2024 Fig. 2b: blocking MLP
  costs much more than blocking MHSA.

{chr(10).join(rows)}

![lens]({NAME}.png)
"""
    common.write_text(common.RESULTS / f"{NAME}.md", md)
    print(md)


if __name__ == "__main__":
    main()
