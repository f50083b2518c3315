"""PMET and MEMIT as the number of edits grows (Li et al. 2024 Fig. 3 protocol; docs/methods.md §6, §7).

Edit counts log-spaced from 1 to `--max` (`n_i = exp(ln(max) · i / k)`, as the paper samples 17 counts up
to 10,000), each a fresh batch of the first n records of `counterfact_easyedit/counterfact-edit.json` on
the unedited SmolLM2, scored on those n records (ES, PS, NS, Score; fluency with `--generation-tokens`).
A request's target does not depend on the rest of its batch, so targets are optimised once per record
and method (cached) and each count re-solves the layer updates. Writes
`experiments/results/pmet_scaling.{json,md,png}`.

    python experiments/pmet_scaling.py [--max 256] [--points 9] [--methods memit,pmet]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time

import matplotlib

matplotlib.use("Agg")
import common
import matplotlib.pyplot as plt

from jaxedit.edit.memit import memit
from jaxedit.edit.target_store import stored_targets
from jaxedit.evaluate import evaluate_counterfact, read_counterfact
from jaxedit.io.cache import digest
from jaxedit.runtime.execution import Execution

NAME = "pmet_scaling"
KEYS = ("ES", "PS", "NS", "score")


def edit_counts(largest: int, points: int) -> list[int]:
    """Distinct `round(exp(ln(largest) · i / (points − 1)))`, i = 0 .. points − 1."""
    return sorted({round(math.exp(math.log(largest) * i / (points - 1))) for i in range(points)})


def main() -> None:
    parser = common.experiment_parser(__doc__, methods="memit,pmet", stats_samples=1000, generation_tokens=0)
    parser.add_argument("--max", type=int, default=256)
    parser.add_argument("--points", type=int, default=9)
    args = parser.parse_args()
    start, model = common.begin(args)
    all_cases = read_counterfact(common.shared_data("counterfact_easyedit", "counterfact-edit.json"))[
        : args.max
    ]
    counts = edit_counts(len(all_cases), args.points)
    methods = args.methods.split(",")
    results: dict = {m: {} for m in methods}
    target_seconds: dict = {}
    for method in methods:
        hp, stats, templates = common.mass_setup(model, method, len(all_cases), args.stats_samples)
        began = time.perf_counter()
        targets = stored_targets(model, [c.request for c in all_cases], hp, templates, common.TARGETS_CACHE)
        target_seconds[method] = round(time.perf_counter() - began)
        for n in counts:
            cases = all_cases[:n]
            solve: dict = {}
            first = targets.select(slice(0, n))

            def edit(
                m,
                batch,
                hp=hp,
                stats=stats,
                templates=templates,
                targets=first,
                solve=solve,
            ):
                began = time.perf_counter()
                batch = batch if isinstance(batch, list) else [batch]  # the runner passes one request alone
                delta = memit(m, batch, stats, hp, templates=templates, targets=targets)
                solve["seconds"] = round(time.perf_counter() - began, 1)
                return delta

            summary = evaluate_counterfact(
                model, cases, edit, method=method, batch=n, out_dir=common.CACHE / NAME / f"{method}-{n}-{digest(dataclasses.asdict(hp))}",
                unedited_dir=common.CACHE / "unedited" / f"counterfact-g{args.generation_tokens}",
                generation_tokens=args.generation_tokens, execution=Execution(progress=False),
                settings={"hparams": dataclasses.asdict(hp), "stats_samples": args.stats_samples},
            )  # fmt: skip
            row = {k: summary[method][k] for k in (*KEYS, "fluency", "n")}
            row["unedited"] = {k: summary["unedited"][k] for k in KEYS}
            row["solve_seconds"] = solve.get("seconds")
            results[method][str(n)] = row
            logging.info("%s %d edits: %s", method, n, row)
    seconds = round(time.perf_counter() - start)
    settings = {
        "counts": counts, "records": len(all_cases), "target_seconds": target_seconds, "seconds": seconds,
        "machine": common.machine(), "generation_tokens": args.generation_tokens,
    }  # fmt: skip
    common.write_text(
        common.RESULTS / f"{NAME}.json", json.dumps({**results, "settings": settings}, indent=1)
    )

    fig, axes = plt.subplots(1, len(KEYS), figsize=(4 * len(KEYS), 3.2), sharex=True)
    for ax, key in zip(axes, KEYS, strict=True):
        for m in methods:
            ax.plot(counts, [results[m][str(n)][key] for n in counts], marker="o", label=m)
        ax.plot(counts, [results[methods[0]][str(n)]["unedited"][key] for n in counts], "--", c="grey",
                label="unedited")  # fmt: skip
        ax.set(xscale="log", xlabel="edits in one batch", title=key)
    axes[0].legend()
    fig.suptitle(f"{common.model_label()}, CounterFact: MEMIT and PMET vs number of edits")
    fig.tight_layout()
    fig.savefig(common.RESULTS / f"{NAME}.png", dpi=120)

    rows = {f"{m} × {n}": results[m][str(n)] for m in methods for n in counts}
    table = common.markdown_table(rows, list(rows), (*KEYS, "solve_seconds"), "method × edits")
    md = f"""# PMET and MEMIT vs the number of edits (Li et al. 2024 Fig. 3 protocol)

Model: {common.model_label()}, float32. Data: the first n records of
`counterfact_easyedit/counterfact-edit.json` for n in {counts}, each count a fresh batch on the unedited
model, packaged SmolLM2 settings; scored on the same n records. Targets optimised once per record
({", ".join(f"{m}: {s} s" for m, s in target_seconds.items())} in this run, 0 where cached) and each count
re-solved (`solve_seconds`: the layer solves and key reads of that batch). Run time {seconds / 60:.0f} min
on {common.machine()}. Produced by `python experiments/{NAME}.py --max {args.max} --points {args.points}`.

{table}

![scaling]({NAME}.png)

Li et al. 2024 Fig. 3 (GPT-J, up to 10,000 edits): efficacy and generalization of PMET stay highest as edits
grow, MEMIT keeps slightly better specificity.
"""
    common.write_text(common.RESULTS / f"{NAME}.md", md)
    print(md)


if __name__ == "__main__":
    main()
