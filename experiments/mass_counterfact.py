"""Mass editing on CounterFact: MEMIT and PMET with N edits in one batch, ROME applied sequentially for
contrast (Li et al. 2024 Table 1 shape; docs/methods.md §6, §7, §12).

SmolLM2-135M, the first N records of `counterfact_easyedit/counterfact-edit.json`. MEMIT and PMET edit
all N records in one batch (one `Delta`) with the packaged SmolLM2 hyperparameters
(`jaxedit/hparams/{memit,pmet}/llama-30.json`, λ from `mass_lambda`) and statistics over Wikipedia text;
ROME edits the N records one after another, each on the model holding the previous edits
(`rome_sequence`). Every record is then scored on the model holding all N edits. Writes
`experiments/results/mass_counterfact.{json,md}`: a JSON object keyed by method (`unedited`, `memit`,
`pmet`, `rome`), each with ES, PS, NS, fluency, score, n. Methods not run by an invocation keep the
results already in that file when it holds the same number of records.

    python experiments/mass_counterfact.py [--n 200] [--methods memit,pmet,rome] [--render]
"""

from __future__ import annotations

import dataclasses
import json
import time

import common

from jaxedit.edit import rome_sequence
from jaxedit.edit.contexts import context_templates
from jaxedit.edit.memit import memit
from jaxedit.edit.rome import default_hparams as rome_hparams
from jaxedit.edit.target_store import stored_targets
from jaxedit.evaluate import evaluate_counterfact, read_counterfact
from jaxedit.io.cache import digest

NAME = "mass_counterfact"
PAPER = {  # Li et al. 2024 Table 1, GPT-J, 10,000 CounterFact edits (fluency there is x100)
    "unedited": {"ES": 15.2, "PS": 17.7, "NS": 83.5, "score": 22.4},
    "memit": {"ES": 98.9, "PS": 88.6, "NS": 73.7, "score": 85.8},
    "pmet": {"ES": 99.5, "PS": 92.8, "NS": 71.4, "score": 86.2},
}
KEYS = ("ES", "PS", "NS", "fluency", "score", "n")
ANALYSIS = """PMET's critical layers. PMET writes only into the MLP output, and its packaged SmolLM2 layers are
2-6, two later than MEMIT's 0-4: on 64 held-out `counterfact-train.json` records PMET scores 85.09 at
layers 2-6 (`mass_pmet_probe64e`) against 83.29 at 0-4 (`mass_pmet_probe64`), while MEMIT scores 83.86
at 2-6 (`mass_memit_probe64`) against 84.39 at 0-4, so MEMIT keeps 0-4. With 0-4 PMET scored 78.33 on
these 200 records (ES 89.5), missing both bars. On held-out records these did not close that gap: PMET
without the φ schedule (targets reach NLL 0.11 instead of 0.39, score 79.65 → 80.15 at 200 records,
`mass_pmet_schedule`); KL weights μ from 0.0625 to 4 (78.95-81.02 against 83.29 at μ = 1,
`mass_pmet_probe64b`, `mass_pmet_probe64c`); 60 target steps instead of 30 (81.06, lower target NLL but
lower PS, `mass_pmet_probe64d`); the discarded δa clamped to 0.1 of the attention output or dropped
(80.15 / 79.57, the paper's "w/o δa", `mass_pmet_probe64`); the paper's lr 0.5 (79.18 at 200 records,
`mass_lambda_n200`). λ 2,000 and the δm clamp 4 were chosen at layers 0-4 (`mass_lambda`) and kept.
Why later layers suit PMET's MLP-only write on SmolLM2 is not established here; the layer choice is an
empirical one on held-out records, the same protocol that chose λ."""
ROME_ANALYSIS = """ROME applied 200 times in sequence to one layer (4) reaches efficacy and paraphrase rates close to
the batch methods but pays on neighbourhood prompts and fluency (NS and fluency against the unedited row):
each rank-one update is solved on the model holding the previous ones, with nothing keeping earlier
updates from spilling onto other subjects, while MEMIT and PMET solve for all 200 keys at once and spread
the change over five layers. Li et al. 2024 (§1) says single-edit methods lose efficacy and generalization
as edits accumulate; at 200 edits on SmolLM2 those hold and specificity is what falls (score 74.09
against MEMIT's 80.66); the sequential run, edits and scoring, took {rome_minutes:.0f} min on this 2-core CPU."""


def previous_results(n: int, methods: list[str]) -> tuple[dict, dict]:
    """The results and settings of the methods this invocation does not run, from the existing results
    file when it scored the same number of records (so `--methods rome` adds ROME to MEMIT and PMET)."""
    path = common.RESULTS / f"{NAME}.json"
    fresh = {"records": n, "machine": common.machine(), "seconds_per_method": {}}
    if not path.exists():
        return {}, fresh
    old = json.loads(path.read_text())
    old_settings = old.pop("settings", {})
    if old_settings.get("records") != n:
        return {}, fresh
    kept = [m for m in old if m not in methods and m != "unedited"]
    results = {m: old[m] for m in ["unedited", *kept] if m in old}
    fresh.update({m: old_settings[m] for m in kept if m in old_settings})
    seconds = old_settings.get("seconds_per_method", {})
    fresh["seconds_per_method"] = {m: seconds[m] for m in kept if m in seconds}
    return results, fresh


def render(results: dict, settings: dict) -> None:
    """Writes the md of a results object (also alone, from the json, with `--render`)."""
    n, stats_samples = settings["records"], settings["stats_samples"]
    seconds = ", ".join(
        f"{m} {t / 60:.0f} min" if t >= 60 else f"{m} {t} s (all cached)"
        for m, t in settings["seconds_per_method"].items()
    )
    methods = [m for m in ("memit", "pmet", "rome") if m in results]

    paper = {f"{m} (Li et al. 2024, GPT-J)": {**v, "n": 10000} for m, v in PAPER.items()}
    table = common.markdown_table({**results, **paper}, ["unedited", *methods, *paper], KEYS)
    verdict = ""
    if "pmet" in results and "memit" in results:
        pmet, memit_ = results["pmet"], results["memit"]
        verdict = (
            f"PMET ES {pmet['ES']} (bar ≥ 90: {'met' if pmet['ES'] >= 90 else 'NOT met'}); PMET score "
            f"{pmet['score']} vs MEMIT {memit_['score']} (bar PMET ≥ MEMIT − 1: "
            f"{'met' if pmet['score'] >= memit_['score'] - 1 else 'NOT met'})."
        )
    md = f"""# Mass editing on CounterFact (Li et al. 2024 Table 1 shape)

Model: {common.model_label()}, float32. Data: the first {n} records of
`counterfact_easyedit/counterfact-edit.json` (EasyEdit layout: one paraphrase and one neighbourhood
prompt per record; fluency over generations from the rewrite and paraphrase prompts). MEMIT and PMET:
all {n} edits in one batch, packaged SmolLM2 hyperparameters
({json.dumps({m: settings[m] for m in ("memit", "pmet") if m in settings})}); ROME: the {n} edits
applied one after another ({json.dumps(settings.get("rome", {}))}). Every record is scored on the model
holding all the edits. Statistics over {stats_samples} Wikipedia articles. Run time per method on
{settings["machine"]}, from the invocation that last ran it: {seconds} (targets and scored cases cached
by earlier invocations are reused and not counted). `target_nll`: the mean NLL of the new objects under the
optimised targets, before the layer solves. Produced by
`python experiments/{NAME}.py --n {n} --methods {",".join(methods)}`.

{table}

{verdict}

{ANALYSIS if "pmet" in results else ""}

{ROME_ANALYSIS.format(rome_minutes=settings["seconds_per_method"].get("rome", 0) / 60) if "rome" in results else ""}

Li et al. 2024 Table 1 (GPT-J, 10,000 edits, the original CounterFact with many paraphrase and neighbourhood
prompts per record) is given for shape only: there both keep efficacy near 99 % at 10,000 edits, PMET wins
on efficacy and generalization and MEMIT on specificity; here the model is 45× smaller, the batch 50× smaller and each record
has one paraphrase and one neighbourhood prompt.
"""
    common.write_text(common.RESULTS / f"{NAME}.md", md)
    print(md)


def main() -> None:
    parser = common.experiment_parser(
        __doc__, n=200, methods="memit,pmet,rome", stats_samples=1000, generation_tokens=50
    )
    parser.add_argument("--render", action="store_true", help="only rewrite the md from the existing json")
    args = parser.parse_args()
    if args.render:
        results = json.loads((common.RESULTS / f"{NAME}.json").read_text())
        render(results, results.pop("settings"))
        return
    start, model = common.begin(args)
    cases = read_counterfact(common.shared_data("counterfact_easyedit", "counterfact-edit.json"))[: args.n]
    requests = [c.request for c in cases]
    methods = args.methods.split(",")
    results, settings = previous_results(len(cases), methods)
    run = f"n{len(cases)}-g{args.generation_tokens}"
    for method in methods:
        began = time.perf_counter()
        if method in ("memit", "pmet"):
            hp, stats, templates = common.mass_setup(model, method, len(cases), args.stats_samples)
            targets = stored_targets(model, requests, hp, templates, common.TARGETS_CACHE)

            def edit(m, batch, hp=hp, stats=stats, templates=templates, targets=targets):
                assert [r.to_dict() for r in batch] == [r.to_dict() for r in requests]
                return memit(m, batch, stats, hp, templates=templates, targets=targets)

            settings[method] = {
                "layers": list(hp.layers), "mom2_weight": hp.mom2_weight, "spread": hp.spread,
                "clamp": hp.targets.clamp, "target_nll": round(float(targets.nll.mean()), 3),
            }  # fmt: skip
            folder = f"{method}-{run}-{digest(dataclasses.asdict(hp))}"  # scored cases of these settings
        else:
            hp = rome_hparams(model)
            stats = common.wikipedia_statistics(model, [hp.layer], args.stats_samples)
            templates = context_templates(model, hp.prefixes)

            def edit(m, batch, hp=hp, stats=stats[hp.layer], templates=templates):
                return rome_sequence(m, batch, stats, hp, templates=templates)

            settings[method] = {"layer": hp.layer, "protocol": f"{len(cases)} edits one after another"}
            folder = f"{method}-{run}-{digest(dataclasses.asdict(hp))}"
        summary = evaluate_counterfact(
            model, cases, edit, method=method, batch=len(cases), out_dir=common.CACHE / NAME / folder,
            unedited_dir=common.CACHE / "unedited" / f"counterfact-g{args.generation_tokens}", generation_tokens=args.generation_tokens,
            settings={"hparams": dataclasses.asdict(hp), "stats_samples": args.stats_samples},
        )  # fmt: skip
        results.setdefault("unedited", {k: summary["unedited"][k] for k in KEYS})
        results[method] = {k: summary[method][k] for k in KEYS}
        settings["seconds_per_method"][method] = round(time.perf_counter() - began)
    settings["seconds"] = round(time.perf_counter() - start)
    settings["stats_samples"] = args.stats_samples
    common.write_text(
        common.RESULTS / f"{NAME}.json", json.dumps({**results, "settings": settings}, indent=1)
    )
    render(results, settings)


if __name__ == "__main__":
    main()
