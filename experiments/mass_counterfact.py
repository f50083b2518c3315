"""Mass editing on CounterFact: MEMIT and PMET with N edits in one batch, ROME applied one by one for
contrast (paper 002 Table 1 shape; METHODS.md §6, §7, §12).

SmolLM2-135M, the first N records of `counterfact_easyedit/counterfact-edit.json`. MEMIT and PMET edit
all N records in one batch (one `Delta`) with the packaged SmolLM2 hyperparameters
(`jaxedit/hparams/{memit,pmet}/llama-30.json`) and statistics over Wikipedia text; every record is then
scored on the batch-edited model. ROME edits each record alone on the unedited model (the single-edit
protocol, as in `rome_counterfact`). Writes `experiments/results/mass_counterfact.{json,md}`: a JSON
object keyed by method (`unedited`, `memit`, `pmet`, `rome`), each with ES, PS, NS, fluency, score, n.

    python experiments/mass_counterfact.py [--n 200] [--methods memit,pmet,rome]
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from common import CACHE, RESULTS, machine, shared_data, write_text

import jaxedit
from jaxedit.edit import key_statistics, rome
from jaxedit.edit.contexts import context_templates
from jaxedit.edit.memit import default_hparams, memit
from jaxedit.edit.rome import default_hparams as rome_hparams
from jaxedit.edit.stats import read_corpus
from jaxedit.evaluate import evaluate_counterfact, read_counterfact

NAME = "mass_counterfact"
PAPER = {"pmet": 86.2, "memit": 85.8}  # paper 002 Table 1, GPT-J, 10,000 CounterFact edits (Score)
KEYS = ("ES", "PS", "NS", "fluency", "score", "n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--methods", default="memit,pmet,rome")
    parser.add_argument(
        "--stats-samples", type=int, default=1000, help="Wikipedia articles (128 tokens each)"
    )
    parser.add_argument("--generation-tokens", type=int, default=50)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    model = jaxedit.load_model("smollm2")
    cases = read_counterfact(shared_data("counterfact_easyedit", "counterfact-edit.json"))[: args.n]
    texts = read_corpus(shared_data("corpus", "wikipedia"))[: args.stats_samples]
    corpus_id = f"wikipedia:{args.stats_samples}"
    results: dict = {}
    settings: dict = {"records": len(cases), "machine": machine(), "seconds_per_method": {}}
    for method in args.methods.split(","):
        begin = time.perf_counter()
        if method in ("memit", "pmet"):
            hp = default_hparams(model, method)
            stats = key_statistics(model, hp.layers, texts, corpus_id=corpus_id)
            templates = context_templates(model, hp.prefixes)

            def edit(m, requests, hp=hp, stats=stats, templates=templates):
                return memit(m, requests, stats, hp, templates=templates)

            batch = len(cases)
            settings[method] = {"layers": list(hp.layers), "mom2_weight": hp.mom2_weight, "spread": hp.spread}
        else:
            hp = rome_hparams(model)
            stats = key_statistics(model, [hp.layer], texts, corpus_id=corpus_id)[hp.layer]
            templates = context_templates(model, hp.prefixes)

            def edit(m, request, hp=hp, stats=stats, templates=templates):
                return rome(m, request, stats, hp, templates=templates)

            batch = 1
            settings[method] = {"layer": hp.layer, "protocol": "one edit at a time"}
        summary = evaluate_counterfact(
            model, cases, edit, method=method, batch=batch, out_dir=CACHE / NAME / method,
            generation_tokens=args.generation_tokens,
        )  # fmt: skip
        results.setdefault("unedited", {k: summary["unedited"][k] for k in KEYS})
        results[method] = {k: summary[method][k] for k in KEYS}
        settings["seconds_per_method"][method] = round(time.perf_counter() - begin)
    settings["seconds"] = round(time.perf_counter() - start)
    write_text(RESULTS / f"{NAME}.json", json.dumps({**results, "settings": settings}, indent=1))

    methods = ["unedited", *args.methods.split(",")]
    rows = ["| method | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
    rows += [f"| {m} | " + " | ".join(str(results[m][k]) for k in KEYS) + " |" for m in methods]
    md = f"""# Mass editing on CounterFact (paper 002 Table 1 shape)

Model: SmolLM2-135M-Instruct, float32. Data: the first {len(cases)} records of
`counterfact_easyedit/counterfact-edit.json`. MEMIT and PMET: all {len(cases)} edits in one batch, packaged
SmolLM2 hyperparameters ({json.dumps({m: settings[m] for m in ("memit", "pmet") if m in settings})});
ROME: each edit alone. Statistics over {args.stats_samples} Wikipedia articles. Run time
{settings["seconds"] / 60:.0f} min on {machine()}. Produced by
`python experiments/{NAME}.py --n {len(cases)} --methods {args.methods}`.

{chr(10).join(rows)}

Paper 002 (GPT-J, 10,000 edits): Score PMET {PAPER["pmet"]}, MEMIT {PAPER["memit"]}.
"""
    write_text(RESULTS / f"{NAME}.md", md)
    print(md)


if __name__ == "__main__":
    main()
