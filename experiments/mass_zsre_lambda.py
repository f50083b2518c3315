"""How MEMIT's and PMET's zsRE scores at 1,037 edits in one batch depend on λ (`mom2_weight`) on SmolLM2
(docs/methods.md §6, §7, §12): a sensitivity curve, not a tuning run.

The packaged SmolLM2 λ (2,000) was chosen on 64 held-out CounterFact records edited together
(`mass_lambda.md`); `mass_zsre` edits all 1,037 zsRE records in one batch, where the preservation term
weighs against 16 times as many keys. λ does not enter the target optimisation, so every point re-solves
the layer updates from the targets `mass_zsre` stored (`experiments/results/mass_zsre_targets/`) and
scores the edited model (batched zsRE scoring). The points are measured on the evaluation records
themselves: they show how far the packaged λ is from the best one at this batch size, and are not used to
change the packaged value. Writes `experiments/results/mass_zsre_lambda.{json,md,png}`.

    python experiments/mass_zsre_lambda.py [--n N] [--grid 2000,500,100] [--methods memit,pmet]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import matplotlib

matplotlib.use("Agg")
import common
import matplotlib.pyplot as plt

from jaxedit.edit import apply
from jaxedit.edit.memit import memit
from jaxedit.edit.target_store import stored_targets
from jaxedit.evaluate.zsre import PROTOCOL, read_zsre, score_zsre_cases, summarise_zsre

NAME = "mass_zsre_lambda"
TARGETS = common.RESULTS / "mass_zsre_targets"
KEYS = ("ES", "PS", "NS", "score")


def main() -> None:
    parser = common.experiment_parser(
        __doc__, n=None, n_help="first N records (default: all)", methods="memit,pmet", stats_samples=1000
    )
    parser.add_argument("--grid", default="2000,500,100")
    args = parser.parse_args()
    start, model = common.begin(args)
    cases, _ = read_zsre(common.shared_data("zsre", "zsre_mend_edit.json"))
    cases = cases[: args.n]
    requests = [c.request for c in cases]
    grid = [float(x) for x in args.grid.split(",")]
    methods = args.methods.split(",")
    points = common.run_cache(NAME, model, args)

    unedited_point = points / "unedited.json"
    if not unedited_point.exists():
        common.write_text(unedited_point, json.dumps(summarise_zsre(score_zsre_cases(model, cases))))
    results: dict = {"unedited": json.loads(unedited_point.read_text())}
    packaged = {}
    for method in methods:
        hp, stats, templates = common.mass_setup(model, method, len(cases), args.stats_samples)
        packaged[method] = hp.mom2_weight
        targets = stored_targets(model, requests, hp, templates, TARGETS)
        results[method] = {}
        for weight in grid:
            point = points / f"{method}-{weight:g}.json"
            if not point.exists():
                solve_start = time.perf_counter()
                changed = dataclasses.replace(hp, mom2_weight=weight)
                delta = memit(model, requests, stats, changed, templates=templates, targets=targets)
                solve_s = time.perf_counter() - solve_start
                row = summarise_zsre(score_zsre_cases(apply(model, delta), cases))
                row["seconds"] = {"solve": round(solve_s), "total": round(time.perf_counter() - solve_start)}
                common.write_text(point, json.dumps(row))
            results[method][f"{weight:g}"] = json.loads(point.read_text())
            logging.info("%s λ=%g: %s", method, weight, results[method][f"{weight:g}"])
    seconds = round(time.perf_counter() - start)
    settings = {
        "records": len(cases),
        "grid": grid,
        "packaged": packaged,
        "seconds": seconds,
        "machine": common.machine(),
    }
    common.write_text(
        common.RESULTS / f"{NAME}.json", json.dumps({**results, "settings": settings}, indent=1)
    )

    fig, axes = plt.subplots(1, len(KEYS), figsize=(4 * len(KEYS), 3.2), sharex=True)
    for ax, key in zip(axes, KEYS, strict=True):
        for m in methods:
            ax.plot(grid, [results[m][f"{w:g}"][key] for w in grid], marker="o", label=m)
            ax.axvline(packaged[m], color=ax.lines[-1].get_color(), ls=":", lw=1)
        ax.axhline(results["unedited"][key], color="grey", ls="--", label="unedited")
        ax.set(xscale="log", xlabel="λ (mom2_weight)", title=key)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(common.RESULTS / f"{NAME}.png", dpi=120)

    rows = ["| method | λ | " + " | ".join(KEYS) + " | solve + scoring (s) |", "|---" * (len(KEYS) + 3) + "|"]
    rows.append("| unedited | - | " + " | ".join(str(results["unedited"][k]) for k in KEYS) + " | - |")
    for m in methods:
        for w in grid:
            point = results[m][f"{w:g}"]
            mark = " (packaged)" if w == packaged[m] else ""
            rows.append(
                f"| {m} | {w:g}{mark} | "
                + " | ".join(str(point[k]) for k in KEYS)
                + f" | {point['seconds']['solve']} + {point['seconds']['total'] - point['seconds']['solve']} |"
            )
    best = {m: max(grid, key=lambda w, m=m: results[m][f"{w:g}"]["score"]) for m in methods}
    lines = "\n".join(
        f"- {m.upper()}: best score {results[m][f'{best[m]:g}']['score']} at λ {best[m]:g}, "
        f"packaged λ {packaged[m]:g} scores {results[m][f'{packaged[m]:g}']['score']}"
        for m in methods
        if f"{packaged[m]:g}" in results[m]
    )
    md = f"""# λ at {len(cases):,} zsRE edits in one batch (sensitivity)

Model: {common.model_label()}, float32. Data: the first {len(cases)} records of `zsre/zsre_mend_edit.json`, all
edited in one batch with the packaged SmolLM2 settings except λ; targets read from
`experiments/results/mass_zsre_targets/` (λ does not enter their optimisation), statistics over
{args.stats_samples} Wikipedia articles. Metric: {PROTOCOL}; score = mean. Run time of this invocation
{seconds / 60:.0f} min on {common.machine()} (points cached by earlier invocations not counted). Produced by
`python experiments/{NAME}.py{f" --n {args.n}" if args.n else ""} --grid {args.grid} --methods {args.methods}`.

{chr(10).join(rows)}

{lines}

These points are measured on the evaluation records, so they are a sensitivity curve, not a tuning
result: the packaged λ stays the one chosen on held-out CounterFact records (`mass_lambda.md`).

![λ sweep on zsRE]({NAME}.png)
"""
    common.write_text(common.RESULTS / f"{NAME}.md", md)
    print(md)


if __name__ == "__main__":
    main()
