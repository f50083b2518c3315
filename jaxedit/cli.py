"""The `jaxedit` command: each subcommand parses arguments, calls one library function, prints the result."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from jaxedit.errors import InputError

log = logging.getLogger("jaxedit")

REPORTS_COMPILES = (
    "trace",
    "edit",
    "eval",
    "stats",
    "lens",
    "demo",
)  # commands that end with a compile count


OVERWRITE_HELP = (
    "let --save replace same-named files jaxedit did not write (the model's own folder included); "
    "no other file is removed"
)


def count(least: int):
    """An argparse type: an integer of at least `least` (sizes, counts, layers), else a one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    parse.__name__ = f"integer >= {least}"
    return parse


def positive_float(text: str) -> float:
    """An argparse type: a finite number above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _load(spec: str):
    from jaxedit.io.loading import load_model

    start = time.perf_counter()
    model = load_model(spec)
    log.info("loaded %s in %.1f s", spec, time.perf_counter() - start)
    return model


def _mesh_shape(text: str | None, devices: int) -> dict[str, int]:
    if text is None:
        return {"data": 1, "model": devices}
    shape = {}
    for part in text.split(","):
        name, sep, size = part.partition("=")
        if not sep or not size.strip().isdigit():
            raise InputError(f"--mesh wants axis=size pairs like data=1,model=8, got {text!r}")
        shape[name.strip()] = int(size)
    return shape


def cmd_plan(args: argparse.Namespace) -> int:
    import json
    import os

    if args.devices < 1:
        raise InputError(f"--devices must be at least 1, got {args.devices}")
    # simulated CPU devices: effective only before JAX starts its backends, which nothing here has done
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
    import jax

    from jaxedit.core.sharding import make_mesh
    from jaxedit.io.files import write_output
    from jaxedit.scale import presets
    from jaxedit.scale.plan import plan

    shape = _mesh_shape(args.mesh, args.devices)
    config = presets.config(args.model, dtype=args.dtype)
    devices = jax.devices()
    if len(devices) < args.devices:
        raise InputError(
            f"--devices {args.devices} but only {len(devices)} {devices[0].platform} devices exist"
        )
    mesh = make_mesh(shape, devices[: args.devices])
    result = plan(config, mesh, name=str(args.model), edits=args.edits, progress=print)
    print(result.table())
    if args.json:
        write_output(Path(args.json), json.dumps(result.to_dict(), indent=1).encode())
        print(f"wrote {args.json}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from jaxedit.core.layout import param_count

    model = _load(args.model)
    c = model.config
    rows = [
        ("source", model.source),
        ("family", c.family),
        ("parameters", f"{param_count(c):,}"),
        ("layers", c.n_layers),
        ("d_model", c.d_model),
        ("heads (q / kv)", f"{c.n_heads} / {c.n_kv_heads}"),
        ("head_dim", c.head_dim),
        ("d_mlp", c.d_mlp),
        ("vocab", c.vocab_size),
        ("context", c.max_positions),
        (
            "positions",
            c.positions if c.positions == "learned" else f"rotary ({c.rotary_style}, {c.rotary_dim} dims)",
        ),
        ("residual", "parallel" if c.parallel_residual else "sequential"),
        ("norm", c.norm),
        ("activation", c.activation + (" (gated)" if c.gated_mlp else "")),
        ("tied embeddings", c.tie_embeddings),
        ("dtype", c.dtype),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from jaxedit.core.generate import generate_text

    model = _load(args.model)
    (text,) = generate_text(
        model, [args.prompt], max_new_tokens=args.max_new_tokens, top_k=args.top_k, seed=args.seed
    )
    print(args.prompt + text)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from jaxedit.demo import run_demo

    model = _load(args.model)
    run_demo(model, args.out, corpus=args.corpus, stats_samples=args.stats_samples, eval_records=args.records)
    return 0


def _segments(text: str) -> int | str | None:
    if text in ("auto", "none"):
        return None if text == "none" else text
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"--segments must be 'auto', 'none' or a positive integer, got {text!r}")
    return int(text)


def _shapes(text: str) -> str | int:
    from jaxedit.trace.dataset import parse_shapes

    return parse_shapes(text)


def cmd_trace(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jaxedit.runtime.execution import Execution
    from jaxedit.trace import Noise, suggest_edit_layer, trace, trace_dataset

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    noise = args.noise if args.noise == "3sigma" else float(args.noise)
    corrupt = "relation" if args.relation else "subject"
    if (args.prompt is None) == (args.dataset is None):
        raise InputError("give either --prompt (with --subject) or --dataset")
    model = _load(args.model)
    out = Path(args.out)
    execution = Execution(segments=_segments(args.segments))
    common = dict(kinds=kinds, noise=Noise(noise, samples=args.samples), window=args.window, sever=args.sever)
    if args.prompt is not None:
        if not args.subject:
            raise InputError("--prompt needs --subject")
        result = trace(
            model, args.prompt, subject=args.subject, corrupt=corrupt, answer=args.answer, execution=execution,
            **common,
        )  # fmt: skip
        result.save_json(out / "trace.json")
        result.plot(out / "trace.png")
        print(
            f"{args.prompt!r} -> {result.answer!r}: p clean {result.p_clean:.4f}, corrupted {result.p_corrupt:.4f}"
        )
        for kind, grid in result.grids.items():
            layer, token = divmod(int(grid.argmax()), grid.shape[1])
            print(
                f"  {kind:<6} strongest restoration: layer {layer}, token {result.tokens[token]!r} (p {grid.max():.4f})"
            )
        print(f"wrote {out / 'trace.json'} and {out / 'trace.png'}")
        return 0
    from jaxedit.data import read_records

    budget = None if args.max_minutes is None else 60 * args.max_minutes
    summary = trace_dataset(
        model, read_records(args.dataset), n=args.n, corrupt=corrupt, out_dir=out, max_seconds=budget,
        execution=dataclasses.replace(execution, workers=args.workers, shapes=args.shapes), **common,
    )  # fmt: skip
    untraced = (
        f"; {summary.n_untraced} known facts left untraced by the time budget" if summary.n_untraced else ""
    )
    print(
        f"traced {summary.n_facts} facts ({summary.n_filtered} of {summary.n_considered} filtered out"
        f"{untraced}) in {summary.seconds:.0f} s"
    )
    if "mlp" in kinds:
        position = "last_relation" if args.relation else "last_subject"
        layer, _ = suggest_edit_layer(model, summary, position=position)
        print(f"peak MLP indirect effect at the {position.replace('_', ' ')} token: layer {layer}")
    print(f"wrote {out / 'trace_dataset.json'} and {out / 'trace_dataset.png'}")
    return 0


def _statistics_source(args: argparse.Namespace, samples: int | None = None):
    """The key statistics' source from `--corpus`, `--stats-samples` (or `samples`) and `--max-len`."""
    from jaxedit.edit.registry import Statistics

    samples = args.stats_samples if samples is None else samples
    if args.corpus is None:
        print(f"statistics: no --corpus given, using {samples} texts sampled from the model itself")
    return Statistics(corpus=args.corpus, samples=samples, max_len=args.max_len)


def _editor(model, args: argparse.Namespace):
    """`args.method` prepared by the registry (`jaxedit.edit.registry.make_editor`)."""
    from jaxedit.edit.registry import Statistics, make_editor

    uses_statistics = args.method not in ("ft", "ft-l", "ireva", "ireva-init")
    statistics = _statistics_source(args) if uses_statistics else Statistics()
    hparams = getattr(args, "hparams", None)
    layers = getattr(args, "layers", None)
    return make_editor(args.method, model, hparams, statistics, layer=args.layer, layers=layers)


def cmd_lens(args: argparse.Namespace) -> int:
    """Vocabulary-lens analyses (docs/methods.md §2) over a known_1000-style fact file: json + png."""
    import json

    import numpy as np

    from jaxedit.io.files import write_output
    from jaxedit.lens import (
        attribute_rate,
        component_probes,
        read_attributes,
        read_lens_facts,
        sublayer_blocking,
    )
    from jaxedit.lens.plot import plot_probes, plot_relation

    model = _load(args.model)
    facts = read_lens_facts(args.dataset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.analysis == "probes":
        facts = facts[: args.n]
        result = component_probes(model, [f.prompt for f in facts], k=args.k)
        plot_probes(result, out / "probes.png")
        write_output(out / "probes.json", json.dumps(result, indent=1).encode())
        print(f"component probes over {len(facts)} prompts: {out / 'probes.json'}, {out / 'probes.png'}")
        return 0
    if not args.attributes:
        raise InputError("--analysis relation needs --attributes (relation_related_attributes.json)")
    attributes = read_attributes(args.attributes)
    kept = [f for f in facts if f.relation in attributes]
    if len(kept) < len(facts):
        print(f"lens: {len(facts) - len(kept)} facts skipped (their relation has no attributes)")
    facts = kept[: args.n]
    result = attribute_rate(model, facts, attributes, k=args.k)
    result.pop("per_fact_rate")
    blocking = (
        None
        if args.no_blocking
        else sublayer_blocking(model, facts, attributes, k=args.k, window=args.window)
    )
    plot_relation(result, out / "relation_lens.png", blocking)
    payload = {**result, **({"blocking": blocking} if blocking else {})}
    write_output(out / "relation_lens.json", json.dumps(payload, indent=1).encode())
    peak = int(np.argmax(result["attribute_rate"]))
    print(
        f"{len(facts)} facts: attribute rate peaks at layer {peak} ({result['attribute_rate'][peak]:.3f}); "
        f"rho(-object rank, attribute rate) = {result['rho']:.2f}; objects among attributes "
        f"{100 * result['objects_included']:.0f} %; written to {out}"
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    model = _load(args.model)
    stats = _statistics_source(args, args.samples).compute(model, args.layers)
    for layer, s in sorted(stats.items()):
        trace = float(s.matrix.trace())
        print(
            f"layer {layer}: E[kk^T] {s.matrix.shape[0]}x{s.matrix.shape[1]} over {s.tokens} tokens, trace {trace:.4g}"
        )
        print(f"    corpus {s.meta['corpus']}, {s.meta['samples']} texts, max_len {s.meta['max_len']}")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from jaxedit.core.generate import generate_text
    from jaxedit.edit import EditJournal
    from jaxedit.edit.health import check_edit
    from jaxedit.edit.requests import Request, as_request
    from jaxedit.io.loading import check_save_target

    model = _load(args.model)
    request = as_request(Request(prompt=args.prompt, subject=args.subject, target=args.target))
    if args.save:  # refused now, not after the edit
        check_save_target(model, args.save, overwrite=args.overwrite)
    edit = _editor(model, args)
    start = time.perf_counter()
    delta = edit(model, request)
    journal = EditJournal(model)
    edited = journal.apply(delta)
    info = delta.info
    seconds = time.perf_counter() - start
    check_edit(model, edited, [request])  # logs a warning when the edit looks harmful
    if args.method.startswith("ireva"):
        from jaxedit.edit.adaptors import fired

        nll = f", final NLL {info['edit_nll']:.3f}" if "edit_nll" in info else ""
        print(f"{args.method} at layer {delta.layers[0]}: {info['neurons']} neurons{nll}, {seconds:.1f} s")
        for firing in fired(edited, [request.text, *args.check]):
            state = "fires" if firing.fired else "below θ"
            print(f"    neuron of fact {firing.fact} (score {firing.score:.3f}, {state}): {firing.prompt!r}")
    else:
        details = (
            f"|delta| {info['delta_norm']:.1f} (|m0| {info['m0_norm']:.1f})" if "delta_norm" in info else ""
        )
        print(
            f"{args.method.upper()} at layer {info['layer']}: {info['steps']} optimisation steps, final NLL "
            f"{info['nll']:.3f} {details}, {seconds:.1f} s"
        )
    prompts = [request.text, *args.check]
    before = generate_text(model, prompts, max_new_tokens=args.max_new_tokens)
    after = generate_text(edited, prompts, max_new_tokens=args.max_new_tokens)
    for prompt, old, new in zip(prompts, before, after, strict=True):
        print(prompt)
        print(f"    before: {old!r}")
        print(f"    after:  {new!r}")
    if args.save and args.method.startswith("ireva"):  # adaptor neurons have no place in an HF checkpoint
        path = journal.save(Path(args.save) / "journal", overwrite=args.overwrite)
        print(f"journal written to {path} (re-apply it to the unedited model with EditJournal.load)")
    elif args.save:
        path = journal.export(args.save, overwrite=args.overwrite)
        journal.save(path / "journal", overwrite=args.overwrite)
        print(f"edited model (Hugging Face format) and its journal written to {path}")
    return 0


def _benchmark(path: str) -> str:
    """`zsre` or `counterfact`, from the first record's fields."""
    from jaxedit.data.records import read_records

    first = read_records(path)[0]
    if "src" in first or isinstance(first.get("locality"), dict):
        return "zsre"
    if "requested_rewrite" in first or "locality_prompt" in first:
        return "counterfact"
    raise InputError(f"{path}: neither CounterFact nor zsRE records (keys {sorted(first)})")


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from jaxedit.evaluate import evaluate_counterfact, read_counterfact
    from jaxedit.evaluate.zsre import evaluate_zsre, read_zsre

    benchmark = _benchmark(args.dataset) if args.benchmark == "auto" else args.benchmark
    model = _load(args.model)
    if benchmark == "zsre":
        cases, skipped = read_zsre(args.dataset)
        if skipped:
            print(f"zsRE: {skipped} records skipped (their subject is not written in their question)")
    else:
        cases = read_counterfact(args.dataset)
    cases = cases[: args.n]
    if args.sequential:
        return _eval_sequential(args, model, cases, benchmark)
    edit = None if args.method == "none" else _editor(model, args)
    settings = {**(edit.settings if edit else {}), "dataset": str(Path(args.dataset).resolve())}
    batch = args.batch if edit is not None and edit.batched else 1
    if benchmark == "zsre":
        summary = evaluate_zsre(
            model, cases, edit, method=args.method, batch=batch, out_dir=args.out, settings=settings
        )
        keys = ("n", "ES", "PS", "NS", "score")
    else:
        summary = evaluate_counterfact(
            model, cases, edit, method=args.method, batch=batch, out_dir=args.out,
            generation_tokens=args.generation_tokens, settings=settings,
        )  # fmt: skip
        keys = ("n", "ES", "PS", "NS", "score", "fluency", "token_acc_rewrite", "token_acc_rephrase")
        keys += ("token_acc_locality",)
    print("| method | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name in ("unedited", args.method):
        if isinstance(summary.get(name), dict):
            print(f"| {name} | " + " | ".join(str(summary[name].get(k)) for k in keys) + " |")
    run = summary["run"]
    print(
        f"run: {run['model']} (weights {run['fingerprint']}), {args.method}, batch {batch}, {run['n']} cases"
    )
    print(f"protocols: {json.dumps(summary['protocol'])}")
    print(f"{summary['seconds']:.0f} s; per-case results and summary.json in {args.out}")
    return 0


def _eval_sequential(args: argparse.Namespace, model, cases, benchmark: str) -> int:
    """`eval --sequential`: the cases edited as one stream in batches of `--batch`, each batch on the
    model holding the earlier ones (`jaxedit.edit.sequential`), probed every `--probe-every` batches
    on all edits so far and on general ability; `lifelong.json` in `--out`. The run is saved in
    `--out`/checkpoint after every batch: the same command run again resumes after the last batch."""
    import json

    from jaxedit.data.records import read_records
    from jaxedit.edit.registry import method_hparams
    from jaxedit.edit.sequential import METHODS, sequential
    from jaxedit.evaluate.lifelong import LifelongProbe, held_out_passages, known_facts
    from jaxedit.evaluate.runner import claim_directory, run_key
    from jaxedit.io.files import write_output

    if args.method not in METHODS:
        raise InputError(f"--sequential runs {', '.join(METHODS)}, not {args.method!r}")
    hp = method_hparams(args.method, model, args.hparams, layer=args.layer, layers=args.layers)
    layers = [hp.layer] if args.method == "rome" else list(hp.layers)
    settings = {
        "hparams": dataclasses.asdict(hp), "sequential": True, "probe_every": args.probe_every,
        "statistics": {"corpus": args.corpus, "samples": args.stats_samples, "max_len": args.max_len},
        "dataset": str(Path(args.dataset).resolve()), "n": len(cases),
        "held_out": args.held_out and str(Path(args.held_out).resolve()),
        "known": args.known and str(Path(args.known).resolve()),
    }  # fmt: skip
    passages = held_out_passages(args.held_out) if args.held_out else ()
    known = known_facts(model, read_records(args.known)) if args.known else ()
    out = Path(args.out)
    claim_directory(out, run_key(model, args.method, batch=args.batch, settings=settings))
    stats = _statistics_source(args).compute(model, layers)
    probe = LifelongProbe(
        counterfact=cases if benchmark == "counterfact" else (), zsre=cases if benchmark == "zsre" else (),
        passages=passages, known=known, generation_tokens=args.generation_tokens,
    )  # fmt: skip
    run = sequential(
        model, [c.request for c in cases], args.method, args.batch, stats, hp, probe=probe,
        probe_every=args.probe_every, checkpoint=out / "checkpoint",
    )  # fmt: skip
    result = {"method": args.method, "batch": args.batch, "benchmark": benchmark, "known_facts": len(known),
              "batches": run.batches, "probes": run.probes}  # fmt: skip
    write_output(out / "lifelong.json", json.dumps(result, indent=1).encode())
    keys = ("ES", "PS", "NS", "score") + (("fluency",) if benchmark == "counterfact" else ())
    print("| edits | " + " | ".join(keys) + " | perplexity | known acc | edit s |")
    print("|---" * (len(keys) + 4) + "|")
    for p in run.probes:
        scores = p.get(benchmark, {})
        cells = [str(scores.get(k, "")) for k in keys]
        print(f"| {p['edits']} | " + " | ".join(cells)
              + f" | {p.get('perplexity', '')} | {p.get('known_accuracy', '')} | {p['edit_seconds']} |")  # fmt: skip
    print(f"{args.method} sequential, batches of {args.batch}: {len(cases)} edits; lifelong.json in {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxedit", description="Locate and edit facts in language models (JAX)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument(
        "--compile-cache",
        metavar="DIR",
        help="keep compiled programs in DIR so later runs skip compiling; 'off' disables "
        "(default: $JAXEDIT_COMPILE_CACHE, else ~/.cache/jaxedit/xla)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="family, sizes and parameter count of a model")
    info.add_argument("model", help='"smollm2", a Hugging Face model directory or a .gguf file')
    info.set_defaults(func=cmd_info)

    pl = sub.add_parser(
        "plan", help="compile forward / trace / ROME / MEMIT programs for a model on a mesh, without weights"
    )
    pl.add_argument(
        "model", help="a preset (gpt2-xl, gptj-6b, neox-20b, llama2-7b) or a config.json / HF dir"
    )
    pl.add_argument("--devices", type=count(1), default=1, help="devices (simulated on a CPU)")
    pl.add_argument("--mesh", help="axis sizes, e.g. data=1,model=8 (default: all devices on model)")
    pl.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"))
    pl.add_argument("--edits", type=count(1), default=1000, help="requests in the MEMIT / PMET batch")
    pl.add_argument("--json", help="write the plan as JSON here")
    pl.set_defaults(func=cmd_plan)

    gen = sub.add_parser("generate", help="complete a prompt (greedy, or top-k sampling)")
    gen.add_argument("model")
    gen.add_argument("prompt")
    gen.add_argument("--max-new-tokens", type=count(1), default=20)
    gen.add_argument("--top-k", type=count(1), default=None, help="sample from the k most likely tokens")
    gen.add_argument("--seed", type=count(0), default=0)
    gen.set_defaults(func=cmd_generate)

    tr = sub.add_parser("trace", help="causal tracing of one prompt or an average over a dataset")
    tr.add_argument("model")
    tr.add_argument("--prompt", help="the fact prompt")
    tr.add_argument("--subject", help="the subject inside the prompt")
    tr.add_argument("--answer", help="answer to read out (default: the model's prediction)")
    tr.add_argument("--dataset", help="JSON / JSONL records (known_1000.json layout)")
    tr.add_argument("--n", type=count(1), default=None, help="number of correctly predicted facts to trace")
    tr.add_argument(
        "--max-minutes",
        type=positive_float,
        default=None,
        help="dataset time budget: average the facts traced by then (the first ones, in order)",
    )
    tr.add_argument(
        "--workers", type=count(1), default=1, help="dataset facts traced concurrently (accelerators)"
    )
    tr.add_argument(
        "--shapes",
        default="auto",
        type=_shapes,
        help="dataset prompt padding: 'bucket' (CPU default), 'single' (accelerators' default: one "
        "program per kind) or k (prompts grouped by length into k shapes)",
    )
    tr.add_argument(
        "--relation", action="store_true", help="corrupt the relation tokens instead of the subject"
    )
    tr.add_argument("--kinds", default="hidden,mlp,attn")
    tr.add_argument("--samples", type=count(1), default=10)
    tr.add_argument(
        "--segments",
        default="auto",
        help="scanned layer ranges per grid program: 'none' unrolls every layer (least work, slowest "
        "compile), k compiles k scanned ranges; default 'auto' (6)",
    )
    tr.add_argument("--noise", default="3sigma", help="'3sigma' or an absolute noise std")
    tr.add_argument("--window", type=count(1), default=10)
    tr.add_argument("--sever", choices=["mlp", "attn", "both"], default=None)
    tr.add_argument("--out", required=True, help="output directory")
    tr.set_defaults(func=cmd_trace)

    le = sub.add_parser("lens", help="vocabulary-lens analyses: attribute rate, rank flow, blocking, probes")
    le.add_argument("model")
    le.add_argument("--analysis", choices=["relation", "probes"], default="relation")
    le.add_argument(
        "--dataset", required=True, help="facts with prompt and relation_id (known_1000.json layout)"
    )
    le.add_argument("--attributes", help="relation_related_attributes.json (relation analysis)")
    le.add_argument("--n", type=count(1), default=None, help="first N facts")
    le.add_argument("--k", type=count(1), default=50, help="top-k lens tokens")
    le.add_argument(
        "--window",
        type=count(1),
        default=None,
        help="blocked layers per window (default: depth-scaled 10/48)",
    )
    le.add_argument(
        "--no-blocking", action="store_true", help="skip sublayer blocking (2 x layers more passes)"
    )
    le.add_argument("--out", required=True, help="output directory")
    le.set_defaults(func=cmd_lens)

    st = sub.add_parser("stats", help="second-moment statistics of MLP keys (cached)")
    st.add_argument("model")
    st.add_argument("--layers", type=count(0), nargs="+", required=True)
    st.add_argument(
        "--corpus",
        help="a text / jsonl / json / parquet / arrow / csv file, a folder of them, a saved dataset or a "
        "dataset in the local Hugging Face cache, streamed (default: text sampled from the model)",
    )
    st.add_argument("--samples", type=count(1), default=1000, help="texts to use")
    st.add_argument("--max-len", type=count(1), default=128, help="tokens kept per text")
    st.set_defaults(func=cmd_stats)

    ed = sub.add_parser("edit", help="edit one fact and show greedy completions before and after")
    ed.add_argument("model")
    ed.add_argument("--method", choices=["rome", "ft", "ft-l", "ireva", "ireva-init"], default="rome")
    ed.add_argument("--prompt", required=True, help='e.g. "{} is located in the city of"')
    ed.add_argument("--subject", required=True)
    ed.add_argument("--target", required=True, help="the new object, e.g. Rome")
    ed.add_argument("--layer", type=count(0), default=None, help="edited layer (default: the family's)")
    ed.add_argument(
        "--hparams", help="hyperparameter JSON (copy one from jaxedit/hparams/<method>/) or an EasyEdit YAML"
    )
    ed.add_argument("--check", nargs="*", default=[], help="more prompts to complete before and after")
    ed.add_argument("--corpus", help="text for the statistics (default: text sampled from the model)")
    ed.add_argument("--stats-samples", type=count(1), default=500)
    ed.add_argument("--max-len", type=count(1), default=128)
    ed.add_argument("--max-new-tokens", type=count(1), default=10)
    ed.add_argument("--save", help="directory for the edited model (HF format) and its journal")
    ed.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    ed.set_defaults(func=cmd_edit)

    ev = sub.add_parser("eval", help="CounterFact or zsRE evaluation of an editing method (resumable)")
    ev.add_argument("model")
    ev.add_argument(
        "--method",
        choices=["rome", "ft", "ft-l", "memit", "pmet", "alphaedit", "ireva", "ireva-init", "none"],
        default="rome",
        help="'none': the unedited model",
    )
    ev.add_argument(
        "--batch", type=count(1), default=100, help="records edited together (memit, pmet, alphaedit, ireva)"
    )
    ev.add_argument(
        "--sequential", action="store_true",
        help="lifelong editing: one stream of --batch batches, each on the model holding the earlier ones "
        "(rome, memit, pmet, alphaedit); writes lifelong.json",
    )  # fmt: skip
    ev.add_argument("--probe-every", type=count(1), default=1, help="batches between probes (--sequential)")
    ev.add_argument(
        "--held-out", help="plain text whose perplexity is probed (--sequential; e.g. WikiText-2 test)"
    )
    ev.add_argument("--known", help="known_1000-style facts whose accuracy is probed (--sequential)")
    ev.add_argument("--layers", type=count(0), nargs="+", help="critical layers (memit, pmet, alphaedit)")
    ev.add_argument(
        "--hparams", help="hyperparameter JSON (copy one from jaxedit/hparams/<method>/) or an EasyEdit YAML"
    )
    ev.add_argument(
        "--dataset", required=True, help="CounterFact (ROME / EasyEdit) or zsRE (MEND / KnowEdit) JSON"
    )
    ev.add_argument("--benchmark", choices=["auto", "counterfact", "zsre"], default="auto")
    ev.add_argument("--n", type=count(1), default=None, help="first N records")
    ev.add_argument("--out", required=True, help="directory for per-case results and summary.json")
    ev.add_argument("--layer", type=count(0), default=None)
    ev.add_argument("--corpus", help="text for the statistics (default: text sampled from the model)")
    ev.add_argument("--stats-samples", type=count(1), default=500)
    ev.add_argument("--max-len", type=count(1), default=128)
    ev.add_argument(
        "--generation-tokens", type=count(0), default=50, help="tokens per fluency sample (0: skip)"
    )
    ev.set_defaults(func=cmd_eval)

    demo = sub.add_parser("demo", help="trace, ROME-edit and evaluate facts on SmolLM2 (README command 1)")
    demo.add_argument("--model", default="smollm2")
    demo.add_argument("--out", default="out/demo", help="directory for the trace, the evaluation")
    demo.add_argument("--corpus", help="text for the statistics (default: text sampled from the model)")
    demo.add_argument("--stats-samples", type=count(1), default=300)
    demo.add_argument("--records", type=count(1), default=None, help="evaluate only the first N demo records")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        from jaxedit.runtime.compile_cache import enable_compile_cache

        try:
            cache = enable_compile_cache(args.compile_cache)
        except InputError as err:
            if args.compile_cache is not None:  # a directory the user asked for: an error
                raise
            cache = None  # the default place is not writable here: run without the cache
            log.warning("jaxedit: %s; running without a compile cache", err)
        log.info("compile cache: %s", cache or "off")
        from jaxedit.runtime.compile_log import compile_log

        with compile_log() as compiled:
            code = args.func(args)
        if args.command in REPORTS_COMPILES and code == 0:
            print(f"compile: {compiled.summary()}")
        return code
    except InputError as err:
        print(f"jaxedit: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.filename is None:  # not about a file the user named: a bug
            return _report_bug()
        print(f"jaxedit: error: {err.strerror or err}: {err.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxedit: interrupted", file=sys.stderr)
        return 130
    except Exception:
        return _report_bug()


def _report_bug() -> int:
    """Print the traceback of the exception being handled, and ask for a report: it is a bug."""
    import traceback

    traceback.print_exc()
    print(
        "jaxedit: internal error: this is a bug in jaxedit, not a problem with your input; please report "
        "it with the command you ran and the traceback above",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
