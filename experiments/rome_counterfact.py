"""ROME and the fine-tuning baselines on CounterFact (Meng et al. 2022 Table 4 shape; docs/methods.md §12).

SmolLM2-135M, the first N records of `counterfact_easyedit/counterfact-edit.json` (EasyEdit split layout:
one paraphrase and one neighbourhood prompt per record), each edit applied alone to the unedited model.
ROME at the traced layer (`default_layer`) with statistics over Wikipedia text from
`../shared/data/corpus/wikipedia`; FT and FT-L at the same layer. Writes
`experiments/results/rome_counterfact.{json,md}` (a JSON object keyed by method: `unedited`, `rome`, `ft`,
`ft-l`, each with ES, PS, NS, magnitudes, fluency, score, token accuracies, n). Per-case results are cached
under `experiments/results/.cache/` (or `$JAXEDIT_EXPERIMENT_CACHE`) so an interrupted run resumes.

    python experiments/rome_counterfact.py [--n 100] [--methods rome,ft,ft-l]
"""

from __future__ import annotations

import dataclasses
import json
import time

import common

from jaxedit.edit import RomeHparams, default_layer, rome
from jaxedit.edit.contexts import context_templates
from jaxedit.edit.finetune import FT, FT_L, finetune
from jaxedit.evaluate import evaluate_counterfact, read_counterfact
from jaxedit.evaluate.counterfact import MAGNITUDES, TOKEN_ACCURACIES

NAME = "rome_counterfact"
PAPER = {  # Meng et al. 2022 Table 4, GPT-2 XL, 2,000 records (docs/methods.md §13)
    "unedited": {"ES": 22.35, "PS": 21.98, "NS": 77.53},
    "rome": {"ES": 99.50, "PS": 97.22, "NS": 72.76},
}


def main() -> None:
    parser = common.experiment_parser(
        __doc__, n=100, methods="rome,ft,ft-l", stats_samples=1000, generation_tokens=50
    )
    args = parser.parse_args()
    start, model = common.begin(args)
    cases = read_counterfact(common.shared_data("counterfact_easyedit", "counterfact-edit.json"))[: args.n]
    layer = default_layer(model)
    stats = common.wikipedia_statistics(model, [layer], args.stats_samples)[layer]
    templates = context_templates(model)
    editors = {
        "rome": lambda m, r: rome(m, r, stats, RomeHparams(layer=layer), templates=templates),
        "ft": lambda m, r: finetune(m, r, dataclasses.replace(FT, layer=layer)),
        "ft-l": lambda m, r: finetune(m, r, dataclasses.replace(FT_L, layer=layer)),
    }
    results: dict = {}
    timings = {}
    for method in args.methods.split(","):
        began = time.perf_counter()
        summary = evaluate_counterfact(
            model, cases, editors[method], method=method, out_dir=common.CACHE / NAME / method,
            generation_tokens=args.generation_tokens, settings={"stats_samples": args.stats_samples},
        )  # fmt: skip
        timings[method] = time.perf_counter() - began
        results.setdefault("unedited", summary["unedited"])
        results[method] = summary[method]
        results.setdefault("protocol", summary["protocol"])
    results["settings"] = {
        "model": f"{common.model_label()} (float32)", "layer": layer, "records": len(cases),
        "statistics": f"{stats.tokens} tokens of {stats.meta['samples']} Wikipedia articles (first 128 tokens each)",
        "contexts": len(templates), "seconds": round(time.perf_counter() - start), "machine": common.machine(),
        "seconds_per_method": {k: round(v) for k, v in timings.items()},
    }  # fmt: skip
    common.write_text(common.RESULTS / f"{NAME}.json", json.dumps(results, indent=1))

    keys = (*MAGNITUDES, "score", "fluency", *TOKEN_ACCURACIES)
    table = common.markdown_table(results, ["unedited", *args.methods.split(",")], keys)
    unedited_ns = results["unedited"]["NS"]
    rome_row = results.get("rome", {})
    md = f"""# ROME on CounterFact (Meng et al. 2022 Table 4 shape)

Model: {common.model_label()}, float32; edited layer {layer} (the peak of the MLP indirect effect at the
last subject token, experiments/results/trace_subject_known.md). Data: the first {len(cases)} records of
`counterfact_easyedit/counterfact-edit.json` (one paraphrase, one neighbourhood prompt each), every edit
applied alone to the unedited model. Statistics: {results["settings"]["statistics"]}. ROME: {len(templates)}
contexts, 20 steps, clamp 4, KL 0.0625, decay 0.5 (docs/methods.md §4-5). FT / FT-L: Adam 5e-4 on the same
layer's output projection, 25 steps (FT-L: |dW| <= 5e-4). Run time {results["settings"]["seconds"] / 60:.0f} min on
{common.machine()}. Produced by `python experiments/{NAME}.py --n {len(cases)} --methods {args.methods}`.

ES / PS / NS: percentage of prompts where the new object beats the true one (NS: the reverse), with
length-normalised probabilities; EM / PM / NM: mean probability differences x100; score: harmonic mean of
ES, PS, NS; fluency: generation entropy of {args.generation_tokens}-token top-k-5 samples of the rewrite and
paraphrase prompts; token_acc_*: {results["protocol"]["token_acc"]}.

{table}

## Compared with the paper (GPT-2 XL, 2,000 records)

| | ES | PS | NS |
|---|---|---|---|
| paper, unedited | {PAPER["unedited"]["ES"]} | {PAPER["unedited"]["PS"]} | {PAPER["unedited"]["NS"]} |
| paper, ROME | {PAPER["rome"]["ES"]} | {PAPER["rome"]["PS"]} | {PAPER["rome"]["NS"]} |
| here, unedited | {results["unedited"]["ES"]} | {results["unedited"]["PS"]} | {unedited_ns} |
| here, ROME | {rome_row.get("ES")} | {rome_row.get("PS")} | {rome_row.get("NS")} |

The issue's bar: ROME ES >= 90, PS >= 60, NS within 10 points of the unedited model
({unedited_ns} here, so >= {unedited_ns - 10:.2f}).
"""
    common.write_text(common.RESULTS / f"{NAME}.md", md)
    print(md)


if __name__ == "__main__":
    main()
