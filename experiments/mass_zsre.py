"""MEMIT and PMET on zsRE (docs/methods.md §12; Li et al. 2024's zsRE table shape).

SmolLM2-135M, the first N records of `zsre/zsre_mend_edit.json` edited in batches of `--batch` with the
packaged SmolLM2 hyperparameters and statistics over Wikipedia text; each record scored by teacher-forced
token accuracy of the new answer on the question (ES) and its rephrasing (PS) and of the `nq question:`
locality answer (NS). Writes `experiments/results/mass_zsre.{json,md}` keyed by method (`unedited`,
`memit`, `pmet`), each with ES, PS, NS, score (mean), n.

    python experiments/mass_zsre.py [--n 1037] [--batch 1037] [--targets-only]

The targets (2.8-11.3 s per edit for MEMIT, 3.5-14.4 for PMET on two CPU cores; longer suffixes last) are
kept in `experiments/results/mass_zsre_targets/` in files of 100 edits, committed with the results: a
run that stops resumes from the last file, `--targets-only` optimises them without statistics or
scoring (to spread the full set over several sittings), and deleting the folder recomputes them.
"""

from __future__ import annotations

import dataclasses
import json
import time

import common

from jaxedit.edit.memit import memit
from jaxedit.edit.target_store import stored_targets, stored_time
from jaxedit.evaluate.zsre import PROTOCOL, evaluate_zsre, read_zsre
from jaxedit.io.cache import digest

NAME = "mass_zsre"
TARGETS = common.RESULTS / f"{NAME}_targets"
KEYS = ("ES", "PS", "NS", "score", "n")
PAPER = {  # Li et al. 2024 Table 2, GPT-J, 10,000 zsRE edits (no score column there)
    "unedited": {"ES": 26.4, "PS": 25.8, "NS": 27.0},
    "memit": {"ES": 96.7, "PS": 89.7, "NS": 26.6},
    "pmet": {"ES": 96.9, "PS": 90.6, "NS": 26.7},
}


def main() -> None:
    parser = common.experiment_parser(
        __doc__, n=None, n_help="first N records (default: all)", methods="memit,pmet", stats_samples=1000
    )
    parser.add_argument("--batch", type=int, default=None, help="edits per batch (default: all at once)")
    parser.add_argument(
        "--targets-only", action="store_true", help="optimise and keep the targets; no solve or scoring"
    )
    args = parser.parse_args()
    start, model = common.begin(args)
    cases, skipped = read_zsre(common.shared_data("zsre", "zsre_mend_edit.json"))
    cases = cases[: args.n]
    batch = args.batch or len(cases)
    results: dict = {}
    settings: dict = {"records": len(cases), "skipped": skipped, "batch": batch, "machine": common.machine()}
    if args.targets_only:
        for method in args.methods.split(","):
            hp, templates = common.mass_setup(model, method, len(cases), None)
            stored_targets(model, [c.request for c in cases], hp, templates, TARGETS)
        return
    for method in args.methods.split(","):
        hp, stats, templates = common.mass_setup(model, method, len(cases), args.stats_samples)

        def edit(m, requests, hp=hp, stats=stats, templates=templates):
            targets = stored_targets(model, requests, hp, templates, TARGETS)
            return memit(m, requests, stats, hp, templates=templates, targets=targets)

        summary = evaluate_zsre(
            model, cases, edit, method=method, batch=batch, out_dir=common.CACHE / NAME / f"{method}-n{len(cases)}-b{batch}-{digest(dataclasses.asdict(hp))}",
            unedited_dir=common.CACHE / "unedited" / "zsre",
            settings={"hparams": dataclasses.asdict(hp), "stats_samples": args.stats_samples},
        )  # fmt: skip
        results.setdefault("unedited", {k: summary["unedited"][k] for k in KEYS})
        results[method] = {k: summary[method][k] for k in KEYS}
        edits, target_seconds = stored_time(model, hp, templates, TARGETS)
        settings[method] = {
            "layers": list(hp.layers),
            "mom2_weight": hp.mom2_weight,
            "seconds": summary["seconds"],
            "target_store": {"edits": edits, "seconds": round(target_seconds)},
        }
    settings["seconds"] = round(time.perf_counter() - start)
    common.write_text(
        common.RESULTS / f"{NAME}.json", json.dumps({**results, "settings": settings}, indent=1)
    )
    paper = {f"{m} (Li et al. 2024, GPT-J 10K)": v for m, v in PAPER.items()}
    table = common.markdown_table({**results, **paper}, [*results, *paper], KEYS)
    target_text = ", ".join(
        f"{settings[m]['target_store']['seconds'] / 60:.0f} min for {m.upper()}'s {settings[m]['target_store']['edits']} edits"
        for m in args.methods.split(",")
    )
    md = f"""# MEMIT and PMET on zsRE

Model: {common.model_label()}, float32. Data: the first {len(cases)} records of `zsre/zsre_mend_edit.json`
({skipped} records skipped: subject not written in the question), edited in batches of {batch} with the
packaged SmolLM2 hyperparameters. Metric: {PROTOCOL}; score = mean. Run time {settings["seconds"] / 60:.0f} min
on {common.machine()}, with the targets read from `experiments/results/{NAME}_targets/`, where their optimisation
took {target_text} (on the same machine, over one or more runs).
Produced by `python experiments/{NAME}.py --n {len(cases)} --batch {batch} --methods {args.methods}`.

{table}

PMET uses its packaged CounterFact settings here (Li et al. 2024 tunes zsRE separately on GPT-J: 20 steps,
lr 0.5, λ 4,500).
"""
    common.write_text(common.RESULTS / f"{NAME}.md", md)
    print(md)


if __name__ == "__main__":
    main()
