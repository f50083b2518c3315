"""MEMIT and PMET on zsRE (METHODS.md §12; paper 002's zsRE table shape).

SmolLM2-135M, the first N records of `zsre/zsre_mend_edit.json` edited in batches of `--batch` with the
packaged SmolLM2 hyperparameters and statistics over Wikipedia text; each record scored by teacher-forced
token accuracy of the new answer on the question (ES) and its rephrasing (PS) and of the `nq question:`
locality answer (NS). Writes `experiments/results/mass_zsre.{json,md}` keyed by method (`unedited`,
`memit`, `pmet`), each with ES, PS, NS, score (mean), n.

    python experiments/mass_zsre.py [--n 1037] [--batch 1037]
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from common import CACHE, RESULTS, machine, shared_data, write_text

import jaxedit
from jaxedit.edit import key_statistics
from jaxedit.edit.contexts import context_templates
from jaxedit.edit.memit import default_hparams, memit
from jaxedit.edit.stats import read_corpus
from jaxedit.evaluate.zsre import PROTOCOL, evaluate_zsre, read_zsre

NAME = "mass_zsre"
KEYS = ("ES", "PS", "NS", "score", "n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="first N records (default: all)")
    parser.add_argument("--batch", type=int, default=None, help="edits per batch (default: all at once)")
    parser.add_argument("--methods", default="memit,pmet")
    parser.add_argument("--stats-samples", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    model = jaxedit.load_model("smollm2")
    cases, skipped = read_zsre(shared_data("zsre", "zsre_mend_edit.json"))
    cases = cases[: args.n]
    batch = args.batch or len(cases)
    texts = read_corpus(shared_data("corpus", "wikipedia"))[: args.stats_samples]
    results: dict = {}
    settings: dict = {"records": len(cases), "skipped": skipped, "batch": batch, "machine": machine()}
    for method in args.methods.split(","):
        hp = default_hparams(model, method)
        stats = key_statistics(model, hp.layers, texts, corpus_id=f"wikipedia:{args.stats_samples}")
        templates = context_templates(model, hp.prefixes)

        def edit(m, requests, hp=hp, stats=stats, templates=templates):
            return memit(m, requests, stats, hp, templates=templates)

        summary = evaluate_zsre(model, cases, edit, method=method, batch=batch, out_dir=CACHE / NAME / method)
        results.setdefault("unedited", {k: summary["unedited"][k] for k in KEYS})
        results[method] = {k: summary[method][k] for k in KEYS}
        settings[method] = {
            "layers": list(hp.layers),
            "mom2_weight": hp.mom2_weight,
            "seconds": summary["seconds"],
        }
    settings["seconds"] = round(time.perf_counter() - start)
    write_text(RESULTS / f"{NAME}.json", json.dumps({**results, "settings": settings}, indent=1))
    rows = ["| method | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
    rows += [f"| {m} | " + " | ".join(str(results[m][k]) for k in KEYS) + " |" for m in results]
    md = f"""# MEMIT and PMET on zsRE

Model: SmolLM2-135M-Instruct, float32. Data: the first {len(cases)} records of `zsre/zsre_mend_edit.json`
({skipped} records skipped: subject not written in the question), edited in batches of {batch} with the
packaged SmolLM2 hyperparameters. Metric: {PROTOCOL}; score = mean. Run time {settings["seconds"] / 60:.0f} min
on {machine()}. Produced by `python experiments/{NAME}.py --n {len(cases)} --batch {batch} --methods {args.methods}`.

{chr(10).join(rows)}
"""
    write_text(RESULTS / f"{NAME}.md", md)
    print(md)


if __name__ == "__main__":
    main()
