"""iReVa's withdrawal (RS, Con) against its margin θ, out-of-scope weight b and exclusive floors on SmolLM2
(docs/methods.md §9).

The first N records of `zsre/zsre_mend_edit.json` are edited at once (retrofit on) for each variant; each
reports zsRE ES / PS / NS and, after withdrawing each fact on its own, RS (the output changes) and Con (the
unedited output comes back), per example and per answer token. zsRE questions share templates ("When was
the inception of ...?") and answers share tokens (years), so after a withdrawal another fact's neuron can
pass θ on the question: a larger θ or a larger push of each key away from other facts' inputs (b) trades
that against PS; exclusive floors (`x`) rule it out on the edit inputs. Withdrawal here is the paper's
(`mode="remove"`: the fact's neurons leave the gate); jaxedit's default, muting (the neurons keep the
inputs they won and write nothing), cannot hand a question to a neighbour and is measured in
`ireva_zsre`. Writes
`experiments/results/ireva_withdrawal.{json,md}`.

    python experiments/ireva_withdrawal.py [--n 200] [--variants 0.65:0.001,0.75:0.001,0.65:1,0.75:1,0.65:0.001:x]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import common

from jaxedit.edit import apply
from jaxedit.edit.ireva import default_hparams, ireva
from jaxedit.evaluate.withdrawal import withdrawal_metrics
from jaxedit.evaluate.zsre import read_zsre, score_zsre_cases, summarise_zsre

NAME = "ireva_withdrawal"


def main() -> None:
    parser = common.experiment_parser(__doc__, n=200)
    parser.add_argument(
        "--variants",
        default="0.65:0.001,0.75:0.001,0.65:1,0.75:1,0.65:0.001:x",
        help="theta:b pairs; a third field `x` turns on exclusive floors",
    )
    args = parser.parse_args()
    start, model = common.begin(args)
    cases, _ = read_zsre(common.shared_data("zsre", "zsre_mend_edit.json"))
    cases = cases[: args.n]
    unedited = summarise_zsre(score_zsre_cases(model, cases))
    cache = common.run_cache(NAME, model, args)
    rows = []
    for spec in args.variants.split(","):
        fields = spec.split(":")
        theta, weight, exclusive = float(fields[0]), float(fields[1]), fields[2:] == ["x"]
        path = cache / f"t{theta:g}-b{weight:g}{'-x' if exclusive else ''}-n{len(cases)}.json"
        if not path.exists() or "RS_token" not in json.loads(path.read_text()):  # older runs: token RS only
            hp = dataclasses.replace(
                default_hparams(model), theta=theta, irr_weight=weight, exclusive=exclusive
            )
            edited = apply(
                model, ireva(model, [c.request for c in cases], hp, facts=[c.case_id for c in cases])
            )
            row = summarise_zsre(score_zsre_cases(edited, cases))
            pairs = [(c.request.text, c.request.target) for c in cases]
            row.update(
                {
                    k: v
                    for k, v in withdrawal_metrics(
                        edited, model, pairs, [c.case_id for c in cases], mode="remove"
                    ).items()
                    if k != "n"
                }
            )
            row["exclusive"] = exclusive
            common.write_text(path, json.dumps({"theta": theta, "irr_weight": weight, **row}))
        rows.append(json.loads(path.read_text()))
        logging.info("%s", rows[-1])
    seconds = round(time.perf_counter() - start)
    common.write_text(
        common.RESULTS / f"{NAME}.json",
        json.dumps(
            {"unedited": unedited, "variants": rows, "seconds": seconds, "machine": common.machine()},
            indent=1,
        ),
    )
    columns = ("ES", "PS", "NS", "score", "RS", "Con", "RS_token", "Con_token", "changed")
    table = [
        "| θ | b | exclusive | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 3) + "|",
        "| unedited | - | - | " + " | ".join(str(unedited.get(k, "-")) for k in columns) + " |",
    ]
    for r in rows:
        cells = [f"{r['theta']:g}", f"{r['irr_weight']:g}", "yes" if r.get("exclusive") else "no"]
        table.append("| " + " | ".join(cells + [str(r[k]) for k in columns]) + " |")
    plain = [r for r in rows if not r.get("exclusive")]
    floors = [r for r in rows if r.get("exclusive")]
    best = max(plain, key=lambda r: r["RS"]) if plain else None
    comparison = ""
    if best and floors:
        f = floors[0]
        comparison = f"""

With the paper's gate the best RS here is {best["RS"]} (Con {best["Con"]}, θ {best["theta"]:g}, b
{best["irr_weight"]:g}); with exclusive floors (θ {f["theta"]:g}, b {f["irr_weight"]:g}) RS is {f["RS"]} against the bound
`changed` {f["changed"]}, Con {f["Con"]}, at a cost in PS ({f["PS"]} against {best["PS"]}): the floors that keep a
neuron silent on other facts' questions and answer prefixes also keep it silent on rephrasings that score
below them."""
    knobs = ""
    if len({(r["theta"], r["irr_weight"]) for r in plain}) > 1:
        knobs = f"""
With the paper's gate, neither a larger θ nor a larger weight on `L_irr` (which pushes each key away from
other facts' bare questions) removes them: best Con {max(r["Con"] for r in plain)} over these variants."""
    md = f"""# iReVa withdrawal vs θ, b and exclusive floors (SmolLM2, zsRE)

Model: {common.model_label()}, float32. Data: the first {len(cases)} records of `zsre/zsre_mend_edit.json`,
edited at once with the packaged SmolLM2 settings except θ, b (the weight of `L_irr`) and, where marked,
exclusive floors (`IrevaHparams.exclusive`: each neuron's threshold raised above its scores on the other
facts' inputs). Each fact is then withdrawn on its own, as the paper withdraws (its neurons removed from
the gate, `mode="remove"`; jaxedit's default muting is measured in `ireva_zsre.md`), and its question
scored token by token (answer
prefixes teacher forced). RS / Con as iReVa 2024 §6.2 defines them, per example: the fact's output (its
top-1 tokens) changes / equals the unedited model's whole (iReVa 2024 Table 2, GPT-2 XL 10K: RS 98.02, Con
93.03). RS_token / Con_token: the same per answer token (stricter). `changed`: facts whose edited output
differs from the unedited one at all, the most RS can reach. Run time of this invocation
{seconds / 60:.0f} min on {common.machine()} (variants cached by earlier invocations, about 7 min each on this
CPU next to other jobs, are not counted). Produced by
`python experiments/{NAME}.py --n {len(cases)} --variants {args.variants}`.

{chr(10).join(table)}

Anything below a neuron's threshold leaves the unedited logits exactly, so a withdrawn fact whose output
does not come back whole (Con) had, at some scored token, another fact's neuron passing θ. The collisions
are mostly on answer prefixes (SmolLM2 writes " 2006" as five tokens " ", "2", "0", "0", "6", and many
answers share them).{knobs}{comparison}
"""
    common.write_text(common.RESULTS / f"{NAME}.md", md)
    print(md)


if __name__ == "__main__":
    main()
