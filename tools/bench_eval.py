"""CounterFact scoring on SmolLM2: jaxedit's batched `score_cases` against a PyTorch reference that scores
one record at a time, as the ROME / MEMIT evaluation code does.

Per record the reference runs one padded `transformers` forward over every (prompt ⊕ target) row of the
record (rewrite, paraphrase and neighbourhood prompts, each with the new and the true object: ROME's
`test_batch_prediction`), one forward of the unedited model over the neighbourhood rows (the EasyEdit
locality token accuracy jaxedit reports beside them), and `generate(do_sample=True, top_k=5)` of the
record's generation prompts with a key/value cache (ROME's `generate_fast`). jaxedit scores the same
records with the same metrics through `jaxedit.evaluate.counterfact.score_cases` (shared forward batches,
several records' generations per call). The two sides must give the same ES / PS / NS on every record and
probabilities within 1e-3 relative; generated texts differ (different random number generators) and are
not compared.

Prints the jaxedit first-call and steady-state seconds, the reference seconds, the agreement, and last
`RATIO eval <reference_seconds / jaxedit_seconds>` (steady state) and `RATIO eval cold <...>` (first
call, compile included, compile cache off).

    python tools/bench_eval.py [--n 64] [--generation-tokens 50]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax
import numpy as np
import torch
from bench_report import cold_start, cpu_name, report_compiles, write_figures
from reference_model import reference_model

import jaxedit
from jaxedit.edit.targets import target_ids
from jaxedit.evaluate import read_counterfact
from jaxedit.evaluate.counterfact import CounterfactCase, score_cases
from jaxedit.runtime.compile_log import compile_log

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/counterfact_easyedit/counterfact-edit.json"


def reference_case(hf, model: jaxedit.Model, case: CounterfactCase, tokens: int) -> dict:
    """One record scored the way the ROME evaluation scores it, on `transformers`."""
    new, true = case.request.target, case.target_true
    prompts = [case.request.text, *case.paraphrases, *case.neighborhood]
    rows, spans = [], []
    for prompt in prompts:
        ids = jaxedit.core.tokens.encode_one(model.tokenizer, prompt)
        for target in (new, true):
            answer = target_ids(model, target)
            rows.append(ids + answer)
            spans.append((len(ids), answer))
    width = max(len(r) for r in rows)
    pad = jaxedit.core.tokens.pad_id(model.tokenizer)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.inference_mode():
        logp = torch.log_softmax(hf(input_ids=ids, attention_mask=mask).logits, dim=-1)
    nll, top = [], []
    for i, (start, answer) in enumerate(spans):
        positions = torch.arange(start - 1, start - 1 + len(answer))
        nll.append(-float(logp[i, positions, torch.tensor(answer)].mean()))
        top.append(logp[i, positions].argmax(-1).numpy())
    prob = np.exp(-np.asarray(nll)).reshape(len(prompts), 2)
    n_para = len(case.paraphrases)
    para, neigh = prob[1 : 1 + n_para], prob[1 + n_para :]
    out = {
        "ES": float(prob[0, 0] > prob[0, 1]),
        "PS": float((para[:, 0] > para[:, 1]).mean()) if n_para else None,
        "NS": float((neigh[:, 1] > neigh[:, 0]).mean()) if len(neigh) else None,
        "p_new": prob[:, 0].tolist(),
        "p_true": prob[:, 1].tolist(),
    }
    if case.neighborhood:  # the unedited model's top-1 on the neighbourhood rows (here the same model)
        locality = [i for i in range(len(spans)) if i >= 2 * (1 + n_para) and i % 2 == 1]
        with torch.inference_mode():
            base = hf(input_ids=ids[locality], attention_mask=mask[locality]).logits.argmax(-1)
        hits = [
            (base[j, spans[i][0] - 1 : spans[i][0] - 1 + len(spans[i][1])].numpy() == top[i]).mean()
            for j, i in enumerate(locality)
        ]
        out["token_acc_locality"] = float(np.mean(hits))
    if tokens and case.generation_prompts:
        prompt_ids, prompt_mask = jaxedit.core.tokens.encode(
            model.tokenizer, case.generation_prompts
        )  # left-padded
        with torch.inference_mode():
            hf.generate(
                input_ids=torch.tensor(prompt_ids),
                attention_mask=torch.tensor(prompt_mask),
                pad_token_id=jaxedit.core.tokens.pad_id(model.tokenizer),
                do_sample=True,
                top_k=5,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="records scored")
    parser.add_argument("--generation-tokens", type=int, default=50)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--json", help="write the figures as JSON here")
    args = parser.parse_args()
    cold_start()
    torch.manual_seed(0)

    model = jaxedit.load_model("smollm2")
    hf = reference_model()
    cases = read_counterfact(args.data)[: args.n]
    tokens = args.generation_tokens

    start = time.perf_counter()
    with compile_log() as compiled:
        score_cases(model, cases, reference=model, generation_tokens=tokens)
    first = time.perf_counter() - start
    start = time.perf_counter()
    ours = score_cases(model, cases, reference=model, generation_tokens=tokens)
    jax_s = time.perf_counter() - start
    reference_case(hf, model, cases[0], tokens)  # warm-up
    start = time.perf_counter()
    theirs = [reference_case(hf, model, case, tokens) for case in cases]
    ref_s = time.perf_counter() - start

    mismatched = [
        case.case_id
        for case, a, b in zip(cases, ours, theirs, strict=True)
        if any(a[k] != b[k] for k in ("ES", "PS", "NS", "token_acc_locality") if k in b)
    ]
    prob_diff = max(
        float(np.max(np.abs(np.asarray(a[k]) - b[k]) / np.maximum(np.asarray(b[k]), 1e-12)))
        for a, b in zip(ours, theirs, strict=True)
        for k in ("p_new", "p_true")
    )
    print(
        f"machine: {os.cpu_count()} CPU cores, jax {jax.__version__} ({jax.devices()[0].device_kind}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    print(
        f"model: SmolLM2-135M (float32); {len(cases)} CounterFact records of {Path(args.data).name}, "
        f"{sum(len(c.generation_prompts) for c in cases)} generation prompts x {tokens} tokens"
    )
    print(f"jaxedit: first call {first:.1f} s (compiles included), steady state {jax_s:.1f} s")
    report_compiles("jaxedit first call", compiled)
    print(f"reference (one record at a time): {ref_s:.1f} s; cpu: {cpu_name()}")
    print(f"records with different ES/PS/NS/locality: {len(mismatched)} {mismatched[:5]}")
    print(f"max relative probability difference: {prob_diff:.1e}")
    assert not mismatched and prob_diff < 1e-3, "the two evaluations disagree"
    write_figures(args.json, "eval", {
        "first_s": first, "steady_s": jax_s, "reference_s": ref_s, "programs": compiled.programs,
        "compile_s": compiled.seconds, "ratio": ref_s / jax_s, "ratio_cold": ref_s / first,
    })  # fmt: skip
    print(f"RATIO eval {ref_s / jax_s:.2f}")
    print(f"RATIO eval cold {ref_s / first:.2f}  (first call, compile included; model loading excluded)")


if __name__ == "__main__":
    main()
