"""RETS against FT-L, ROME and PMET on CounterFact with R-Specificity (paper 000 Table 3 shape).

SmolLM2-135M, the first N records of `counterfact_easyedit/counterfact-edit.json`, each edited alone on the
unedited model: FT-L and ROME at ROME's layer, PMET (one-record batches, packaged settings), RETS at the
layer where relation tracing peaks (packaged `hparams/rets/llama-30.json`) with the subject constraint
built from the prompts of `counterfact-train.json` (keys at their last token), and RETS without it. Each
record carries R-Specificity prompts (same subject, another relation: `jaxedit.evaluate.rspec`); scores:
Efficacy (ES), Generalization (PS), S-Specificity (NS), R-Specificity (RS_spec), fluency, and RETS'
Score (arithmetic mean of ES, PS, NS, RS_spec). Writes `experiments/results/rets_counterfact.{json,md}`
keyed by method (`unedited`, `ft-l`, `rome`, `pmet`, `rets`, `rets-nosc`).

    python experiments/rets_counterfact.py [--n 100] [--constraint-n 20000] [--methods ft-l,rome,pmet,rets,rets-nosc]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time

from common import (
    CACHE,
    RESULTS,
    machine,
    markdown_table,
    mass_setup,
    shared_data,
    wikipedia_statistics,
    write_text,
)

import jaxedit
from jaxedit.edit import FT_L, finetune, memit, rome
from jaxedit.edit.contexts import context_templates
from jaxedit.edit.rets import default_hparams as rets_hparams
from jaxedit.edit.rets import rets, subject_constraint
from jaxedit.edit.rome import default_hparams as rome_hparams
from jaxedit.evaluate import evaluate_counterfact, read_counterfact
from jaxedit.evaluate.rspec import attach_rspec

NAME = "rets_counterfact"
KEYS = ("ES", "PS", "NS", "RS_spec", "fluency", "score_rets", "n")
ALL = ("ft-l", "rome", "pmet", "rets", "rets-nosc")
PAPER = {  # paper 000 Table 3, GPT-2 XL (Efficacy, Generalization, S-Spec, R-Spec)
    "rome": {"ES": 100.0, "PS": 96.4, "NS": 76.0, "RS_spec": 41.1},
    "rets": {"ES": 100.0, "PS": 71.5, "NS": 68.6, "RS_spec": 78.5},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--constraint-n", type=int, default=20000, help="prompts of the subject constraint")
    parser.add_argument("--methods", default=",".join(ALL))
    parser.add_argument("--stats-samples", type=int, default=1000)
    parser.add_argument("--generation-tokens", type=int, default=50)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    model = jaxedit.load_model("smollm2")
    cases = read_counterfact(shared_data("counterfact_easyedit", "counterfact-edit.json"))[: args.n]
    cases = attach_rspec(
        model, cases, shared_data("pararel"), known=shared_data("rets", "known_1000.json"),
        relation_files=[shared_data("zsre", "ZsRE-test-all.json"), shared_data("knowedit_wiki_counterfact", "test_cf.json")],
    )  # fmt: skip
    rome_hp, rets_hp = rome_hparams(model), rets_hparams(model)
    stats = wikipedia_statistics(model, [rome_hp.layer, rets_hp.layer], args.stats_samples)
    templates = context_templates(model, rome_hp.prefixes)
    editors = {
        "ft-l": lambda m, r: finetune(m, r, dataclasses.replace(FT_L, layer=rome_hp.layer)),
        "rome": lambda m, r: rome(m, r, stats[rome_hp.layer], rome_hp, templates=templates),
        "rets-nosc": lambda m, r: rets(m, r, stats[rets_hp.layer], rets_hp, templates=templates),
    }
    settings: dict = {
        "records": len(cases),
        "with_rspec": sum(1 for c in cases if c.rspec),
        "machine": machine(),
    }
    methods = args.methods.split(",")
    if "rets" in methods:
        train = read_counterfact(shared_data("counterfact_easyedit", "counterfact-train.json"))[
            : args.constraint_n
        ]
        constraint = subject_constraint(model, rets_hp.layer, [c.request for c in train])
        editors["rets"] = lambda m, r: rets(
            m, r, stats[rets_hp.layer], rets_hp, constraint=constraint, templates=templates
        )
        settings["constraint_prompts"] = len(train)
    if "pmet" in methods:
        hp, mass_stats, mass_templates = mass_setup(model, "pmet", 1, args.stats_samples)
        editors["pmet"] = lambda m, r: memit(m, [r], mass_stats, hp, templates=mass_templates, progress=False)
    results: dict = {}
    for method in methods:
        if method not in editors:
            raise SystemExit(f"unknown method {method!r}; methods: {', '.join(ALL)}")
        began = time.perf_counter()
        summary = evaluate_counterfact(
            model, cases, editors[method], method=method, out_dir=CACHE / NAME / f"{method}-{len(cases)}",
            unedited_dir=CACHE / "unedited" / f"{NAME}-{len(cases)}", generation_tokens=args.generation_tokens,
        )  # fmt: skip
        results.setdefault("unedited", {k: summary["unedited"].get(k) for k in KEYS})
        results[method] = {k: summary[method].get(k) for k in KEYS}
        settings[method] = {"seconds": round(time.perf_counter() - began)}
    settings["layers"] = {"rome": rome_hp.layer, "rets": rets_hp.layer}
    settings["seconds"] = round(time.perf_counter() - start)
    write_text(RESULTS / f"{NAME}.json", json.dumps({**results, "settings": settings}, indent=1))
    paper = {f"{m} (paper 000, GPT-2 XL)": v for m, v in PAPER.items()}
    table = markdown_table({**results, **paper}, [*results, *paper], KEYS)
    md = f"""# RETS on CounterFact with R-Specificity (SmolLM2)

Model: SmolLM2-135M-Instruct, float32. Data: the first {len(cases)} records of
`counterfact_easyedit/counterfact-edit.json`, {settings["with_rspec"]} of them with R-Specificity prompts
(R-Spec is averaged over those). Each record edited alone. ROME / FT-L at layer {rome_hp.layer}; RETS at layer
{rets_hp.layer} (relation tracing), key at the last relation token, KL prompt "<prompt> is a"; subject
constraint from {settings.get("constraint_prompts", 0)} prompts of `counterfact-train.json`. Score = mean of ES, PS,
NS, RS_spec (paper 000's). Run time {settings["seconds"] / 60:.0f} min on {machine()}. Produced by
`python experiments/{NAME}.py --n {len(cases)} --methods {args.methods}`.

{table}
"""
    write_text(RESULTS / f"{NAME}.md", md)
    print(md)


if __name__ == "__main__":
    main()
