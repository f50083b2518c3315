"""The end-to-end demo (`jaxedit demo`, README command 1): locate a fact, edit it, check, evaluate.

1. What the model predicts for the built-in facts (top-5 next tokens).
2. Causal trace of "The Eiffel Tower is located in the city of" (Meng et al. 2022 §2): heatmaps written to
   `OUT/trace.png`, the subject token and layer of the largest MLP effect printed.
3. ROME (Meng et al. 2022 §3) moves the Eiffel Tower to Rome: greedy completions before and after, on the
   prompt, a paraphrase and an unrelated fact; then the edit is reverted and the original answer is back.
4. CounterFact-style evaluation (ES / PS / NS, Score, fluency) of ROME on the project's own 8-record
   file `jaxedit/data/demo_counterfact.json`, one edit at a time.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from jaxedit.core.generate import generate_text
from jaxedit.core.predict import next_tokens
from jaxedit.data import demo_counterfact_path, demo_facts
from jaxedit.edit import RomeHparams, apply, default_layer, revert, rome
from jaxedit.edit.contexts import context_templates
from jaxedit.edit.requests import Request
from jaxedit.edit.stats import corpus_or_samples, key_statistics
from jaxedit.evaluate import evaluate_counterfact, read_counterfact
from jaxedit.io.loading import Model
from jaxedit.trace import Execution, Noise, trace

EDIT = Request(prompt="{} is located in the city of", subject="The Eiffel Tower", target="Rome")
PARAPHRASE = "The Eiffel Tower, a famous landmark, is in the city of"
UNRELATED = "The Louvre is in the city of"


def run_demo(
    model: Model,
    out: str | Path,
    *,
    corpus: str | Path | None = None,
    stats_samples: int = 300,
    trace_samples: int = 5,
    eval_records: int | None = None,
    max_new_tokens: int = 8,
) -> dict:
    """Run the four steps, printing as it goes; returns the evaluation summary."""
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    facts = demo_facts()
    print(f"1. Top-5 next tokens of {model.name} ({model.config.family}, {model.config.n_layers} layers):\n")
    for row in next_tokens(model, [f["prompt"] for f in facts], k=5):
        print(row.prompt)
        for token, prob in zip(row.tokens, row.probs, strict=True):
            print(f"    {token!r:<14} {prob:6.3f}")

    print(f"\n2. Causal trace of {EDIT.text!r} (subject corrupted, {trace_samples} noise samples)")
    result = trace(
        model,
        EDIT.text,
        subject=EDIT.subject,
        noise=Noise(samples=trace_samples),
        execution=Execution(segments=4),
    )
    result.plot(out / "trace.png")
    result.save_json(out / "trace.json")
    first, end = result.subject_span
    effect = result.effect("mlp")[:, first:end]  # [layers, subject tokens]
    layer_peak, token_peak = (int(i) for i in divmod(int(effect.argmax()), effect.shape[1]))
    print(
        f"    p({result.answer!r}) clean {result.p_clean:.3f}, corrupted {result.p_corrupt:.3f}; the largest MLP "
        f"effect on the subject is at {result.tokens[first + token_peak]!r}, layer {layer_peak} "
        f"({effect[layer_peak, token_peak]:.3f}); heatmaps: {out / 'trace.png'}"
    )

    layer = default_layer(model)
    texts, corpus_id = corpus_or_samples(model, corpus, stats_samples)
    source = (
        f"{len(texts)} texts of {corpus}" if corpus else f"{len(texts)} texts sampled from the model itself"
    )
    print(f"\n3. ROME at layer {layer}: statistics over {source}")
    stats = key_statistics(model, [layer], texts, corpus_id=corpus_id)[layer]
    templates = context_templates(model)
    hp = RomeHparams(layer=layer)
    delta = rome(model, EDIT, stats, hp, templates=templates)
    edited = apply(model, delta)
    prompts = [EDIT.text, PARAPHRASE, UNRELATED]
    before = generate_text(model, prompts, max_new_tokens=max_new_tokens)
    after = generate_text(edited, prompts, max_new_tokens=max_new_tokens)
    for prompt, old, new in zip(prompts, before, after, strict=True):
        print(f"    {prompt}\n        before: {old!r}\n        after:  {new!r}")
    restored = revert(edited, delta)
    (back,) = generate_text(restored, [EDIT.text], max_new_tokens=max_new_tokens)
    print(f"    reverted: {back!r}")

    cases = read_counterfact(demo_counterfact_path())[:eval_records]
    print(f"\n4. ROME on the {len(cases)} built-in CounterFact-format records (one edit at a time)")

    def edit(m: Model, request: Request):
        return rome(m, request, stats, hp, templates=templates)

    # a rerun with the same statistics and settings resumes; other settings refuse the folder
    settings = {"hparams": dataclasses.asdict(hp), "statistics": stats.meta, "templates": templates}
    summary = evaluate_counterfact(
        model, cases, edit, method="rome", out_dir=out / "eval", generation_tokens=20, settings=settings
    )
    keys = ("ES", "PS", "NS", "score", "fluency")
    print("    method     " + "".join(f"{k:>9}" for k in keys))
    for name in ("unedited", "rome"):
        print(f"    {name:<10} " + "".join(f"{summary[name][k]!s:>9}" for k in keys))
    print(f"\nDone in {time.perf_counter() - start:.0f} s; outputs in {out}")
    return summary
