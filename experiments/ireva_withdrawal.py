"""iReVa's withdrawal (RS, Con) against its margin θ and out-of-scope weight b on SmolLM2 (METHODS.md §9).

The first N records of `zsre/zsre_mend_edit.json` are edited at once (retrofit on) for each (θ, b); each
variant reports zsRE ES / PS / NS and, after withdrawing each fact on its own, RS (the output changes)
and Con (the unedited output comes back). zsRE questions share templates ("When was the inception of
...?") and answers share tokens (years), so after a withdrawal another fact's neuron can pass θ on the
question: that keeps RS and Con down, and a larger θ or a larger push of each key away from other facts'
inputs (b) trades it against PS. Writes `experiments/results/ireva_withdrawal.{json,md}`.

    python experiments/ireva_withdrawal.py [--n 200] [--variants 0.65:0.001,0.75:0.001,0.65:1,0.75:1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time

from common import CACHE, RESULTS, machine, shared_data, write_text

import jaxedit
from jaxedit.edit import apply
from jaxedit.edit.ireva import default_hparams, ireva
from jaxedit.evaluate.withdrawal import withdrawal_metrics
from jaxedit.evaluate.zsre import read_zsre, score_zsre_cases, summarise_zsre

NAME = "ireva_withdrawal"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument(
        "--variants",
        default="0.65:0.001,0.75:0.001,0.65:1,0.75:1,0.65:0.001:x",
        help="theta:b pairs; a third field `x` turns on exclusive floors",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    model = jaxedit.load_model("smollm2")
    cases, _ = read_zsre(shared_data("zsre", "zsre_mend_edit.json"))
    cases = cases[: args.n]
    unedited = summarise_zsre(score_zsre_cases(model, cases))
    cache = CACHE / NAME
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
                    for k, v in withdrawal_metrics(edited, model, pairs, [c.case_id for c in cases]).items()
                    if k != "n"
                }
            )
            row["exclusive"] = exclusive
            write_text(path, json.dumps({"theta": theta, "irr_weight": weight, **row}))
        rows.append(json.loads(path.read_text()))
        logging.info("%s", rows[-1])
    seconds = round(time.perf_counter() - start)
    write_text(
        RESULTS / f"{NAME}.json",
        json.dumps(
            {"unedited": unedited, "variants": rows, "seconds": seconds, "machine": machine()}, indent=1
        ),
    )
    table = ["| θ | b | ES | PS | NS | score | RS | Con |", "|---|---|---|---|---|---|---|---|"]
    table.append(
        f"| unedited | - | {unedited['ES']} | {unedited['PS']} | {unedited['NS']} | {unedited['score']} | - | - |"
    )
    for r in rows:
        table.append(
            f"| {r['theta']:g} | {r['irr_weight']:g} | {r['ES']} | {r['PS']} | {r['NS']} | {r['score']} | {r['RS']} | {r['Con']} |"
        )
    md = f"""# iReVa withdrawal vs θ and b (SmolLM2, zsRE)

Model: SmolLM2-135M-Instruct, float32. Data: the first {len(cases)} records of `zsre/zsre_mend_edit.json`,
edited at once with the packaged SmolLM2 settings except θ and b (the weight of `L_irr`). RS / Con: each
fact withdrawn on its own after all edits (paper 001 Table 2, GPT-2 XL 10K: RS 98.02, Con 93.03). Run time
of this invocation {seconds / 60:.0f} min on {machine()} (variants cached by earlier invocations, about 7 min
each on this CPU next to other jobs, are not counted). Produced by `python experiments/{NAME}.py --n {len(cases)} --variants {args.variants}`.

{chr(10).join(table)}

Best RS here {max(r["RS"] for r in rows)}, best Con {max(r["Con"] for r in rows)}. Anything below θ leaves the
unedited logits exactly, so a Con of c % means that on the other (100 − c) % of the withdrawn facts' scored
tokens some other fact's neuron still passes θ. Neither a larger θ nor a 1000-fold weight on `L_irr` (which
pushes each key away from other facts' bare questions) removes that: the collisions are on the answer
prefixes (SmolLM2 writes " 2006" as five tokens " ", "2", "0", "0", "6", and many answers share them).
"""
    write_text(RESULTS / f"{NAME}.md", md)
    print(md)


if __name__ == "__main__":
    main()
