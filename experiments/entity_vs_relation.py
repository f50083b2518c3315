"""Editing a fact from the entity vs the relation perspective (Wei et al. 2024 Tables 1-2 shape).

SmolLM2-135M on the first N facts of `rets/known_1000.json` whose relation has ParaRel wordings
(`jaxedit.evaluate.perspective` says how the probes are built, the gap Wei et al. 2024 leaves). Each fact gets
a counterfactual object and is edited alone, from the entity perspective (key at the last subject
token, at the subject-traced layers: ROME layer 4, MEMIT layers 0-4) and from the relation perspective
(key at the last relation token, at the relation-traced layer 23: ROME and RETS at 23, MEMIT at 19-23).
Reliability and Generality (Wei et al. 2024 eqs. 6-7) on entity probes (same subject, the relation worded as
ParaRel does) and relation probes (the edit prompt's wording, alone and after held-out contexts).
Writes `experiments/results/entity_vs_relation.{json,md}`.

    python experiments/entity_vs_relation.py [--n 50] [--methods rome-entity,memit-entity,...]
"""

from __future__ import annotations

import dataclasses
import json
import time

import common

from jaxedit.edit import memit, rome
from jaxedit.edit.contexts import context_templates
from jaxedit.edit.memit import default_hparams as memit_hparams
from jaxedit.edit.rets import default_hparams as rets_hparams
from jaxedit.edit.rets import rets, subject_constraint
from jaxedit.edit.rome import default_hparams as rome_hparams
from jaxedit.evaluate import read_counterfact
from jaxedit.evaluate.perspective import METRICS, build_perspective_cases, evaluate_perspectives
from jaxedit.evaluate.rspec import read_patterns

NAME = "entity_vs_relation"
ALL = ("rome-entity", "rome-relation", "rets-relation", "memit-entity", "memit-relation")
PAPER = {  # Wei et al. 2024, GPT-2 XL: Table 2 (entity edits) and Table 1 (relation edits)
    "rome-entity (paper, GPT-2 XL)": (99.93, 96.6, 96.12, 74.46),
    "memit-entity (paper, GPT-2 XL)": (93.88, 79.6, 97.28, 76.01),
    "rome-relation (paper, GPT-2 XL)": (27.92, 28.12, 99.99, 84.47),
    "memit-relation (paper, GPT-2 XL)": (24.15, 24.63, 91.36, 76.24),
}


def comparison(results: dict) -> str:
    """Wei et al. 2024's finding, checked on these numbers: relation-perspective edits reach the relation
    probes but transfer less to the entity probes than entity-perspective edits do."""
    lines = []
    for method in ("rome", "memit"):
        entity, relation = results.get(f"{method}-entity"), results.get(f"{method}-relation")
        if entity is None or relation is None:
            continue
        lines.append(
            f"- {method.upper()}: entity edits score {entity['entity_reliability']:.1f} / "
            f"{entity['entity_generality']:.1f} on the entity probes and {entity['relation_reliability']:.1f} / "
            f"{entity['relation_generality']:.1f} on the relation probes; relation edits "
            f"{relation['entity_reliability']:.1f} / {relation['entity_generality']:.1f} and "
            f"{relation['relation_reliability']:.1f} / {relation['relation_generality']:.1f} (paper: "
            f"{PAPER[f'{method}-entity (paper, GPT-2 XL)'][0]} / {PAPER[f'{method}-entity (paper, GPT-2 XL)'][1]} "
            f"and {PAPER[f'{method}-relation (paper, GPT-2 XL)'][0]} / "
            f"{PAPER[f'{method}-relation (paper, GPT-2 XL)'][1]} on the entity probes)."
        )
    if "rets-relation" in results:
        r = results["rets-relation"]
        lines.append(
            f"- RETS (relation edits only): {r['entity_reliability']:.1f} / {r['entity_generality']:.1f} on "
            f"the entity probes, {r['relation_reliability']:.1f} / {r['relation_generality']:.1f} on the "
            "relation probes."
        )
    drops = [
        results[f"{m}-entity"]["entity_reliability"] - results[f"{m}-relation"]["entity_reliability"]
        for m in ("rome", "memit")
        if f"{m}-entity" in results and f"{m}-relation" in results
    ]
    if drops:
        holds = all(d > 0 for d in drops)
        lines.append(
            f"- The paper's direction {'holds' if holds else 'does not hold'} here: moving the key from the "
            f"subject to the relation lowers entity Reliability by {', '.join(f'{d:.1f}' for d in drops)} "
            "points (ROME, MEMIT), while relation Reliability stays high; the gap is far smaller than "
            "GPT-2 XL's (about 70 points), and SmolLM2's entity edits themselves reach the ParaRel "
            "wordings less often than GPT-2 XL's do."
        )
    return "\n".join(lines)


def main() -> None:
    parser = common.experiment_parser(__doc__, n=50, methods=",".join(ALL), stats_samples=1000)
    parser.add_argument("--constraint-n", type=int, default=20000)
    args = parser.parse_args()
    start, model = common.begin(args)
    rome_hp, rets_hp = rome_hparams(model), rets_hparams(model)
    entity_layer, relation_layer = rome_hp.layer, rets_hp.layer
    held_out = context_templates(model, ((10, 5),), seed=rome_hp.seed + 1)  # not the edits' contexts
    facts = json.loads(common.shared_data("rets", "known_1000.json").read_text())
    cases = build_perspective_cases(facts, read_patterns(common.shared_data("pararel")), held_out, n=args.n)

    memit_entity = memit_hparams(model, "memit")
    last = dataclasses.replace(memit_entity.targets, key_token="last")
    memit_relation = dataclasses.replace(
        memit_entity, layers=tuple(range(relation_layer - 4, relation_layer + 1)), targets=last
    )
    rome_relation = dataclasses.replace(
        rome_hp, layer=relation_layer, targets=dataclasses.replace(rome_hp.targets, key_token="last")
    )
    methods = args.methods.split(",")
    unknown = set(methods) - set(ALL)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; methods: {', '.join(ALL)}")
    layers = {entity_layer, relation_layer}
    layers |= set(memit_entity.layers) if "memit-entity" in methods else set()
    layers |= set(memit_relation.layers) if "memit-relation" in methods else set()
    stats = common.wikipedia_statistics(model, layers, args.stats_samples)
    rome_templates = context_templates(model, rome_hp.prefixes, seed=rome_hp.seed)
    memit_templates = context_templates(model, memit_entity.prefixes, seed=memit_entity.seed)

    def memit_editor(hp):
        def edit(m, request):
            return memit(
                m,
                [request],
                {layer: stats[layer] for layer in hp.layers},
                hp,
                templates=memit_templates,
                progress=False,
            )

        return edit

    editors = {
        "rome-entity": lambda m, r: rome(m, r, stats[entity_layer], rome_hp, templates=rome_templates),
        "memit-entity": memit_editor(memit_entity),
        "rome-relation": lambda m, r: rome(
            m, r, stats[relation_layer], rome_relation, templates=rome_templates
        ),
        "memit-relation": memit_editor(memit_relation),
    }
    settings: dict = {"facts": len(cases), "machine": common.machine()}
    if "rets-relation" in methods:
        train = read_counterfact(common.shared_data("counterfact_easyedit", "counterfact-train.json"))
        constraint = subject_constraint(
            model, relation_layer, [c.request for c in train[: args.constraint_n]]
        )
        editors["rets-relation"] = lambda m, r: rets(
            m, r, stats[relation_layer], rets_hp, constraint=constraint, templates=rome_templates
        )
        settings["constraint_prompts"] = min(len(train), args.constraint_n)
    chosen = {m: editors[m] for m in methods}
    method_hparams = {
        "rome-entity": rome_hp, "memit-entity": memit_entity, "rome-relation": rome_relation,
        "memit-relation": memit_relation, "rets-relation": rets_hp,
    }  # fmt: skip
    keys = {
        m: {"hparams": dataclasses.asdict(method_hparams[m]), "stats_samples": args.stats_samples,
            "constraint_prompts": settings.get("constraint_prompts")}
        for m in methods
    }  # fmt: skip
    results = evaluate_perspectives(model, cases, chosen, out_dir=common.CACHE / NAME, settings=keys)
    results = {k: {m: round(v, 2) if m != "n" else v for m, v in row.items()} for k, row in results.items()}
    settings["layers"] = {
        "rome-entity": [entity_layer], "memit-entity": list(memit_entity.layers),
        "rome-relation": [relation_layer], "memit-relation": list(memit_relation.layers),
        "rets-relation": [relation_layer],
    }  # fmt: skip
    settings["seconds"] = round(time.perf_counter() - start)
    common.write_text(
        common.RESULTS / f"{NAME}.json", json.dumps({**results, "settings": settings}, indent=1)
    )
    paper = {k: dict(zip(METRICS, v, strict=True)) for k, v in PAPER.items()}
    table = common.markdown_table({**results, **paper}, [*results, *paper], (*METRICS, "n"))
    relations = sorted({c.relation for c in cases})
    md = f"""# Entity vs relation perspective (Wei et al. 2024 Tables 1-2 shape, SmolLM2)

Model: {common.model_label()}, float32. Data: the first {len(cases)} facts of `rets/known_1000.json`
whose relation has at least two ParaRel wordings besides the fact's own ({len(relations)} relations),
each given the object of the next fact of its relation as the new object and edited alone.
Entity-perspective edits put the key at the last subject token at the subject-traced layers (ROME
{entity_layer}, MEMIT {list(memit_entity.layers)}); relation-perspective edits put it at the last
relation token at the relation-traced layer (ROME and RETS {relation_layer}, MEMIT
{list(memit_relation.layers)}). Packaged settings otherwise (RETS with its subject constraint over
{settings.get("constraint_prompts", 0)} CounterFact-train prompts).

Probes (Wei et al. 2024 does not publish its own; `jaxedit/evaluate/perspective.py`): **entity** = the same
subject with the relation worded as ParaRel does (the first wording gives Reliability, the others
Generality); **relation** = the edit prompt's own wording, alone (Reliability) and after 5 held-out
10-token contexts (Generality). A hit means every token of the new object is the teacher-forced argmax;
Generality counts a rephrasing only when its Reliability prompt is also a hit (eq. 7). In %.
Run time of this invocation {settings["seconds"] / 60:.0f} min on {common.machine()} (cases scored by earlier invocations are
reused from the cache and not counted). Produced by
`python experiments/{NAME}.py --n {args.n} --methods {args.methods}`.

{table}

`unedited` scores the new objects before any edit; `unedited (true object)` the true ones.

## Compared with Wei et al. 2024 (GPT-2 XL)

{comparison(results)}
"""
    common.write_text(common.RESULTS / f"{NAME}.md", md)
    print(md)


if __name__ == "__main__":
    main()
