"""Lifelong editing on SmolLM2: how long a model survives a stream of edits (issue 39; AlphaEdit,
Fang et al., 2025, §4's sequential protocol: 2,000 CounterFact / zsRE edits in batches of 100).

The first N records of `counterfact_easyedit/counterfact-edit.json` (or `zsre/zsre_mend_edit.json`)
are edited as one stream in batches of B, each batch on the model holding the earlier ones
(`jaxedit.edit.sequential`): MEMIT and PMET with the earlier batches' `K_pᵀK_p` in their solves,
AlphaEdit with its null-space projection, ROME one edit after another; `memit-plain` is MEMIT without
the earlier batches' keys, as the papers run MEMIT in sequence. After every `--probe-every`
batches the edits made so far are scored together (ES / PS / NS, and fluency on 32 of them), with
two probes of general ability that need no network: the perplexity of 64 WikiText-2 test passages
(text the statistics never read) and the accuracy on the `known_1000` facts the unedited model got
right. Writes `experiments/results/lifelong_<benchmark>.{json,md,png}`; methods not run by an
invocation keep their results in that file when its settings are the same.

    python experiments/lifelong.py [--n 2000] [--batch 100] [--methods memit,pmet,alphaedit,rome,memit-plain]
        [--benchmark counterfact|zsre] [--probe-every 1] [--stats-samples 1000] [--render]
        [--checkpoints DIR]

Each method's run is saved after every batch under `--checkpoints` (default `~/.cache/jaxedit/lifelong`),
so a run stopped part-way resumes at its last batch when the same command is run again.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import common

from jaxedit.data.records import read_records
from jaxedit.edit.sequential import default_hparams, sequential
from jaxedit.evaluate import read_counterfact
from jaxedit.evaluate.lifelong import LifelongProbe, held_out_passages, known_facts
from jaxedit.evaluate.zsre import read_zsre
from jaxedit.io.cache import cache_root

PANELS = (("ES", "efficacy ES"), ("PS", "generalization PS"), ("NS", "specificity NS"),
          ("fluency", "fluency"), ("perplexity", "held-out perplexity"), ("known_accuracy", "known facts (%)"))  # fmt: skip
# What the AlphaEdit paper states in its text: its PDF is not in ../shared/papers, so no number is
# quoted here; the trend it reports (MEMIT's specificity and fluency collapsing over 2,000 sequential
# CounterFact edits on GPT-J / Llama3 while AlphaEdit's hold) is the one to compare with.


def layers_of(hp) -> list[int]:
    return [hp.layer] if hasattr(hp, "layer") else list(hp.layers)


def run_method(model, name: str, cases, benchmark: str, probe: LifelongProbe, args) -> dict:
    """One method's sequential run; `<method>-plain` runs it without the earlier batches' `K_pᵀK_p`
    (MEMIT / PMET as the papers run them in sequence)."""
    method, plain = name.removesuffix("-plain"), name.endswith("-plain")
    hp = default_hparams(model, method)
    stats = common.wikipedia_statistics(model, layers_of(hp), args.stats_samples)
    start = time.perf_counter()
    checkpoint = Path(args.checkpoints) / f"{benchmark}_{name}_n{len(cases)}_b{args.batch}"
    run = sequential(
        model, [c.request for c in cases], method, args.batch, stats, hp, probe=probe,
        probe_every=args.probe_every, keep_keys=not plain, checkpoint=checkpoint,
    )  # fmt: skip
    return {"probes": run.probes, "batches": run.batches, "seconds": round(time.perf_counter() - start, 1)}


def value(probe: dict, key: str, benchmark: str):
    if key in ("perplexity", "known_accuracy"):
        return probe.get(key)
    return probe.get(benchmark, {}).get(key)


def render(results: dict, benchmark: str) -> None:
    settings = results["settings"]
    methods = [m for m in results if m not in ("settings", "unedited")]
    keys = [
        k
        for k, _ in PANELS
        if any(value(p, k, benchmark) is not None for m in methods for p in results[m]["probes"])
    ]
    lines = [
        f"# Lifelong editing on {benchmark}: {common.model_label()}, {settings['n']} edits in batches of {settings['batch']}",
        "",
        f"Command: `python experiments/lifelong.py --n {settings['n']} --batch {settings['batch']} "
        f"--benchmark {benchmark} --probe-every {settings['probe_every']} --stats-samples {settings['stats_samples']}`. "
        f"Machine: {settings['machine']}; CPU {settings['cpu']}.",
        "",
        "Each row: the model after that many edits (every batch computed on the model holding the earlier "
        "ones), scored on all edits so far; perplexity of 64 WikiText-2 test passages; accuracy on the "
        f"{settings['known']} `known_1000` facts the unedited model answered right (100 before any edit). "
        "Fluency is the generation entropy of 32 of the edited cases. `edit s`: editing seconds so far. "
        "`memit` and `pmet` keep the earlier batches' keys in their solves (`K_pᵀK_p`, as AlphaEdit does); "
        "`memit-plain` is MEMIT without them, as the papers run it in sequence.",
        "",
    ]
    if "unedited" in results:
        base = results["unedited"]
        cells = [str(value(base, k, benchmark)) for k in keys]
        lines += [
            f"Unedited model, all {settings['n']} cases: "
            + ", ".join(f"{k} {c}" for k, c in zip(keys, cells, strict=True)),
            "",
        ]
    for method in methods:
        lines += [f"## {method} ({results[method]['seconds']:.0f} s in all)", ""]
        lines.append("| edits | " + " | ".join(keys) + " | edit s |")
        lines.append("|---" * (len(keys) + 2) + "|")
        for p in results[method]["probes"]:
            cells = [str(value(p, k, benchmark)) for k in keys]
            lines.append(f"| {p['edits']} | " + " | ".join(cells) + f" | {p['edit_seconds']} |")
        lines.append("")
    lines += [
        "AlphaEdit's paper (Fang et al., 2025) is not in `../shared/papers`, so none of its figures is quoted; "
        "its reported trend is that MEMIT's specificity and fluency fall over 2,000 sequential edits while "
        "AlphaEdit's stay near the unedited model's.",
        "",
        "Timing: editing seconds are wall time on the machine above; a run that shared the CPU with other jobs "
        "(the alphaedit run of this file: its first batch includes a 12-minute pause) reads slower than it is.",
    ]
    common.write_text(common.RESULTS / f"lifelong_{benchmark}.md", "\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, title) in zip(axes.flat, PANELS, strict=True):
        for method in methods:
            points = [(p["edits"], value(p, key, benchmark)) for p in results[method]["probes"]]
            points = [(x, y) for x, y in points if y is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=method)
        ax.set_title(title)
        ax.set_xlabel("edits")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    figure.suptitle(f"{common.model_label()}, sequential {benchmark} edits in batches of {settings['batch']}")
    figure.tight_layout()
    figure.savefig(common.RESULTS / f"lifelong_{benchmark}.png", dpi=110)


def main() -> None:
    parser = common.experiment_parser(
        __doc__, n=2000, methods="memit,pmet,alphaedit,rome", stats_samples=1000, generation_tokens=50
    )
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--benchmark", choices=("counterfact", "zsre"), default="counterfact")
    parser.add_argument("--probe-every", type=int, default=1)
    parser.add_argument("--render", action="store_true", help="only rewrite the md / png from the json")
    parser.add_argument(
        "--checkpoints",
        default=str(cache_root() / "lifelong"),
        help="folder of the runs' checkpoints (saved after every batch; a rerun resumes after the last one)",
    )
    args = parser.parse_args()
    path = common.RESULTS / f"lifelong_{args.benchmark}.json"
    if args.render:
        render(json.loads(path.read_text()), args.benchmark)
        return
    _, model = common.begin(args, logging.WARNING)
    if args.benchmark == "zsre":
        cases, _ = read_zsre(common.shared_data("zsre", "zsre_mend_edit.json"))
    else:
        cases = read_counterfact(common.shared_data("counterfact_easyedit", "counterfact-edit.json"))
    cases = cases[: args.n]
    known = known_facts(model, read_records(common.shared_data("rets", "known_1000.json")))
    passages = held_out_passages(common.shared_data("corpus", "wikitext-2", "wiki.test.raw"))
    probe = LifelongProbe(
        counterfact=cases if args.benchmark == "counterfact" else (), zsre=cases if args.benchmark == "zsre" else (),
        passages=passages, known=known, generation_tokens=args.generation_tokens,
    )  # fmt: skip
    settings = {"n": len(cases), "batch": args.batch, "probe_every": args.probe_every,
                "stats_samples": args.stats_samples, "generation_tokens": args.generation_tokens,
                "known": len(known), "machine": common.machine(), "cpu": common.cpu_model()}  # fmt: skip
    results = json.loads(path.read_text()) if path.exists() else {}
    same = {k: v for k, v in results.get("settings", {}).items() if k not in ("machine", "cpu")} == {
        k: v for k, v in settings.items() if k not in ("machine", "cpu")
    }
    if not same:
        results = {}
    results["settings"] = settings
    if "unedited" not in results:  # the unedited model on every case: the reference each curve starts from
        results["unedited"] = dict(probe(model, [c.request for c in cases], 0))
    for method in args.methods.split(","):
        print(f"{method}: {len(cases)} edits in batches of {args.batch}", flush=True)
        results[method] = run_method(model, method, cases, args.benchmark, probe, args)
        common.write_text(path, json.dumps(results, indent=1))
        render(results, args.benchmark)
        print(
            f"{method}: {results[method]['seconds']:.0f} s; last probe {results[method]['probes'][-1]}",
            flush=True,
        )


if __name__ == "__main__":
    main()
