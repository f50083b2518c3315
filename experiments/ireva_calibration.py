"""Calibrating iReVa's score scale on SmolLM2 (docs/methods.md §9: the paper does not pin it).

Held-out data: the first N records of `zsre/ZsRE-test-all.json` (KnowEdit layout; its locality prompts
ask about the same subject with another relation, harder to leave untouched than the NQ questions of the
edit set the other experiments use). All N facts are edited at once, initialisation only (no retrofit,
so the gate's own behaviour is measured), for each (normalisation, score) variant and scale α; θ is then
swept on the edited model (θ is an array of the adaptor: no re-editing). Each point reports zsRE ES, PS,
NS (token top-1 accuracy ×100), and how many locality prompts make a neuron fire. The chosen defaults:
among points where at most 1 % of the locality prompts make a neuron fire and NS is within one point of
the unedited model's, the best mean of ES and PS. Writes
`experiments/results/ireva_calibration.{json,md,png}`.

    python experiments/ireva_calibration.py [--n 64]
"""

from __future__ import annotations

import json
import logging
import time

import matplotlib
import numpy as np

matplotlib.use("Agg")
import common
import jax.numpy as jnp
import matplotlib.pyplot as plt

from jaxedit.edit import apply
from jaxedit.edit.adaptors import fired
from jaxedit.edit.gate import adaptor_of, with_adaptor
from jaxedit.edit.ireva import IrevaHparams, ireva
from jaxedit.evaluate.zsre import read_zsre, score_zsre_cases, summarise_zsre

NAME = "ireva_calibration"
VARIANTS = (("center", "cosine"), ("l2", "cosine"), ("none", "dot"))


def main() -> None:
    parser = common.experiment_parser(__doc__, n=64)
    parser.add_argument("--alphas", default="100,300,1000,3000")
    parser.add_argument("--thetas", default="0.5,0.65,0.75,0.85")
    parser.add_argument("--finalists", type=int, default=4, help="best initialisation-only gates retrofitted")
    args = parser.parse_args()
    start, model = common.begin(args)
    cases, _ = read_zsre(common.shared_data("zsre", "ZsRE-test-all.json"))
    cases = cases[: args.n]
    alphas = [float(a) for a in args.alphas.split(",")]
    thetas = [float(t) for t in args.thetas.split(",")]
    unedited = summarise_zsre(score_zsre_cases(model, cases))
    locality = [prompt for c in cases for prompt, _ in c.locality]
    cache = common.run_cache(NAME, model, args)
    points = []
    for normalise, score in VARIANTS:
        for alpha in alphas:
            paths = {t: cache / f"{normalise}-{score}-a{alpha:g}-t{t:g}-n{len(cases)}.json" for t in thetas}
            if all(p.exists() for p in paths.values()):
                points += [json.loads(p.read_text()) for p in paths.values()]
                continue
            hp = IrevaHparams(retrofit=False, alpha=alpha, normalise=normalise, score=score)
            edited = apply(model, ireva(model, [c.request for c in cases], hp, progress=False))
            for theta in thetas:
                state = adaptor_of(edited.params).replace(theta=jnp.float32(theta))
                at = edited.replace(params=with_adaptor(edited.params, state))
                row = summarise_zsre(score_zsre_cases(at, cases))
                row["locality_fired"] = round(100 * float(np.mean([f.fired for f in fired(at, locality)])), 2)
                point = {"normalise": normalise, "similarity": score, "alpha": alpha, "theta": theta, **row}
                common.write_text(paths[theta], json.dumps(point))
                points.append(point)
                logging.info("%s", point)
    # the gate must stay shut on unrelated prompts (docs/methods.md §9): at most 1 % of the locality prompts may
    # make a neuron fire, and NS must stay within a point of the unedited model
    eligible = [p for p in points if p["NS"] >= unedited["NS"] - 1.0 and p["locality_fired"] <= 1.0]
    # the best few gates again with the retrofit on (what `ireva` does by default); the default is the best
    # of those under the same constraints
    finalists = sorted(eligible, key=lambda p: (p["ES"] + p["PS"]) / 2, reverse=True)[: args.finalists]
    retrofits = []
    for p in finalists:
        key = f"{p['normalise']}-{p['similarity']}-a{p['alpha']:g}-t{p['theta']:g}-n{len(cases)}"
        path = cache / f"retrofit-{key}.json"
        if not path.exists():
            hp = IrevaHparams(
                alpha=p["alpha"], theta=p["theta"], normalise=p["normalise"], score=p["similarity"]
            )
            edited = apply(model, ireva(model, [c.request for c in cases], hp, progress=False))
            row = summarise_zsre(score_zsre_cases(edited, cases))
            row["locality_fired"] = round(100 * float(np.mean([f.fired for f in fired(edited, locality)])), 2)
            common.write_text(
                path, json.dumps({**{k: p[k] for k in ("normalise", "similarity", "alpha", "theta")}, **row})
            )
        retrofits.append(json.loads(path.read_text()))
    kept = [r for r in retrofits if r["NS"] >= unedited["NS"] - 1.0 and r["locality_fired"] <= 1.0]
    best = max(kept, key=lambda p: (p["ES"] + p["PS"]) / 2)
    seconds = round(time.perf_counter() - start)
    settings = {
        "records": len(cases),
        "alphas": alphas,
        "thetas": thetas,
        "seconds": seconds,
        "machine": common.machine(),
    }
    common.write_text(
        common.RESULTS / f"{NAME}.json",
        json.dumps(
            {
                "unedited": unedited,
                "points": points,
                "chosen": best,
                "retrofits": retrofits,
                "settings": settings,
            },
            indent=1,
        ),
    )

    fig, axes = plt.subplots(1, len(VARIANTS), figsize=(4.5 * len(VARIANTS), 3.4), sharey=True)
    for ax, (normalise, score) in zip(axes, VARIANTS, strict=True):
        for alpha in alphas:
            mine = [
                p
                for p in points
                if (p["normalise"], p["similarity"], p["alpha"]) == (normalise, score, alpha)
            ]
            ax.plot(thetas, [p["ES"] for p in mine], marker="o", label=f"ES α={alpha:g}")
            ax.plot(thetas, [p["NS"] for p in mine], marker="x", ls=":", label=f"NS α={alpha:g}")
        ax.axhline(unedited["NS"], color="grey", ls="--", lw=0.8)
        ax.set(title=f"{normalise} / {score}", xlabel="θ")
    axes[0].set_ylabel("zsRE token accuracy ×100")
    axes[-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(common.RESULTS / f"{NAME}.png", dpi=120)

    head = "| normalise | score | α | θ | ES | PS | NS | score | locality fired % |"
    rows = [head, "|---" * 9 + "|"]
    rows.append(
        f"| unedited | - | - | - | {unedited['ES']} | {unedited['PS']} | {unedited['NS']} | {unedited['score']} | - |"
    )
    for p in points:
        rows.append(
            f"| {p['normalise']} | {p['similarity']} | {p['alpha']:g} | {p['theta']:g} | {p['ES']} | {p['PS']} | "
            f"{p['NS']} | {p['score']} | {p['locality_fired']} |"
        )
    retro_rows = [head, "|---" * 9 + "|"]
    for p in retrofits:
        mark = " **chosen**" if p is best else ""
        retro_rows.append(
            f"| {p['normalise']} | {p['similarity']} | {p['alpha']:g} | {p['theta']:g}{mark} | {p['ES']} | {p['PS']} | "
            f"{p['NS']} | {p['score']} | {p['locality_fired']} |"
        )
    md = f"""# iReVa score calibration on SmolLM2

Model: {common.model_label()}, float32, adaptor at layer {IrevaHparams().resolve_layer(model.config)} (the
second-to-last). Data: the first {len(cases)} records of `zsre/ZsRE-test-all.json` (held out from the
`zsre_mend_edit.json` set of `ireva_zsre`), all edited at once, initialisation only. Score = mean of ES, PS,
NS (iReVa's convention); "locality fired" = share of the {len(locality)} locality prompts whose best neuron
passes θ. Run time of this invocation {seconds / 60:.0f} min on {common.machine()} (points cached by earlier
invocations are not counted; the whole grid took about 12 min on this CPU). Produced by
`python experiments/{NAME}.py --n {len(cases)} --alphas {args.alphas} --thetas {args.thetas} --finalists {args.finalists}`.

Initialisation only:

{chr(10).join(rows)}

The {len(retrofits)} best initialisation-only gates (mean of ES and PS, among points where at most 1 % of
the locality prompts make a neuron fire and NS stays within one point of the unedited {unedited["NS"]}),
again with the retrofit (5 Adam steps, `ireva`'s default):

{chr(10).join(retro_rows)}

Chosen (the best of these under the same constraints): normalisation `{best["normalise"]}`, score
`{best["similarity"]}`, α {best["alpha"]:g}, θ {best["theta"]:g}; these are the defaults of `IrevaHparams`
and `jaxedit/hparams/ireva/llama-30.json`.

Why the scale matters on this model: at layer 28 the residual stream has norm ~700 while an unembedding row
has norm ~3, so the paper's α = 0.2 (set for GPT-2 XL with unnormalised dot scores of a few hundred) leaves
every edit undone once the score is put on a cosine scale. With raw dot scores (`none / dot`) every
prompt's best score is far above any θ: the gate fires everywhere and the locality answers break. Cosine
scores of the raw MLP input are high between any two zsRE questions (they share the direction all inputs
share); subtracting the mean input (`center`) removes it and opens the gap between edit prompts and
locality prompts.

![calibration]({NAME}.png)
"""
    common.write_text(common.RESULTS / f"{NAME}.md", md)
    print(md)


if __name__ == "__main__":
    main()
