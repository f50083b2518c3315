"""Shared pieces of the experiment scripts: data paths, machine description, markdown tables."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("JAXEDIT_SHARED", ROOT.parent / "shared"))
RESULTS = ROOT / "experiments" / "results"
# per-fact caches of resumable runs (outside the repository when JAXEDIT_EXPERIMENT_CACHE is set)
CACHE = Path(os.environ.get("JAXEDIT_EXPERIMENT_CACHE", RESULTS / ".cache"))


def trace_parser(doc: str) -> argparse.ArgumentParser:
    """Command-line options shared by the tracing experiments."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="correctly predicted facts to trace")
    parser.add_argument("--samples", type=int, default=10, help="noise samples per fact")
    parser.add_argument("--model", default="smollm2", help="'smollm2', a HF directory or a .gguf file")
    parser.add_argument("--bucket", type=int, default=4, help="pad prompt shapes to multiples of this")
    parser.add_argument("--workers", type=int, default=1, help="facts traced concurrently (accelerators)")
    parser.add_argument(
        "--segments", type=int, default=4, help="scanned layer ranges per grid program (compile time)"
    )
    parser.add_argument(
        "--shapes",
        default="auto",
        choices=("auto", "bucket", "single"),
        help="'single': one padded shape (one program per kind; accelerators' default)",
    )
    return parser


def dataset_options(args: argparse.Namespace) -> dict:
    """`trace_dataset` keyword arguments from `trace_parser` options."""
    return {
        "n": args.n,
        "samples": args.samples,
        "bucket": args.bucket,
        "workers": args.workers,
        "segments": args.segments,
        "shapes": args.shapes,
    }


def command(name: str, args: argparse.Namespace, **extra: object) -> str:
    """The command line that reproduces a run (model path omitted when it is the default)."""
    options = {"n": args.n, "samples": args.samples, "bucket": args.bucket, **extra}
    if args.workers != 1:
        options["workers"] = args.workers
    return f"python experiments/{name}.py " + " ".join(f"--{k} {v}" for k, v in options.items())


def digest(value: object) -> str:
    """A short stable hash of a JSON-ready value (cache folder names keyed by settings)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def target_settings(hp) -> dict:
    """The fields of `hp.targets` that differ from `TargetHparams()`: a field added later with a default
    that keeps the old behaviour leaves cached targets valid (changing a default's value must clear
    `CACHE/targets`)."""
    import dataclasses

    from jaxedit.edit.targets import TargetHparams

    defaults = TargetHparams()
    return {
        f.name: getattr(hp.targets, f.name)
        for f in dataclasses.fields(hp.targets)
        if getattr(hp.targets, f.name) != getattr(defaults, f.name)
    }


def targets_folder(model, hp, templates) -> Path:
    """`CACHE/targets/<settings digest>/`; the files of folders named by the earlier digests of the
    whole `TargetHparams` (with and without the `key_token` field added for RETS) are moved into it."""
    import dataclasses
    import shutil

    from jaxedit.edit.stats import fingerprint

    base = {"model": fingerprint(model), "layer": max(hp.layers), "templates": list(templates)}
    folder = CACHE / "targets" / digest({**base, "targets": target_settings(hp)})
    whole = dataclasses.asdict(hp.targets)
    legacy = [whole]
    if hp.targets.key_token == "subject":
        legacy.append({k: v for k, v in whole.items() if k != "key_token"})
    for old in legacy:
        old_folder = CACHE / "targets" / digest({**base, "targets": old})
        if old_folder.exists() and old_folder != folder:
            folder.mkdir(parents=True, exist_ok=True)
            for path in old_folder.glob("*.npz"):
                if not (folder / path.name).exists():
                    path.rename(folder / path.name)
            shutil.rmtree(old_folder)
    return folder


RESUME_EVERY = 100


def cached_targets(model, requests, hp, templates):
    """`memit_targets` for `requests`, cached per request under `targets_folder` (a request's target
    does not depend on the other requests of its batch), so the experiments that edit the same records
    with the same settings (scaling, mass editing, ablations) optimise each target once."""
    import dataclasses

    from jaxedit.edit.memit import memit_targets
    from jaxedit.edit.targets import Targets

    folder = targets_folder(model, hp, templates)
    paths = [folder / f"{digest(r.to_dict())}.npz" for r in requests]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    # saved every `RESUME_EVERY` requests, so an interrupted run of thousands resumes where it stopped
    for first in range(0, len(missing), RESUME_EVERY):
        todo = missing[first : first + RESUME_EVERY]
        if len(missing) > RESUME_EVERY:
            print(f"targets {first + 1}-{first + len(todo)} of {len(missing)} missing", flush=True)
        fresh = memit_targets(model, [requests[i] for i in todo], hp, templates=templates)
        folder.mkdir(parents=True, exist_ok=True)
        for row, i in enumerate(todo):
            part = fresh.select(slice(row, row + 1))
            arrays = {k: v for k, v in dataclasses.asdict(part).items() if v is not None}
            tmp = paths[i].with_suffix(".tmp.npz")
            np.savez(tmp, **arrays)
            tmp.replace(paths[i])
    parts = []
    for p in paths:
        with np.load(p) as data:
            parts.append(Targets(**{k: data[k] for k in data.files}))
    return Targets.concatenate(parts)


def write_text(path: Path, text: str) -> None:
    """Write a results file atomically."""
    from jaxedit.checkpoints import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())


def shared_data(*parts: str) -> Path:
    path = SHARED.joinpath("data", *parts)
    if not path.exists():
        raise SystemExit(f"{path} not found: set JAXEDIT_SHARED to the folder holding data/")
    return path


def machine() -> str:
    import jax

    device = jax.devices()[0]
    return f"{platform.machine()} {os.cpu_count()} CPU cores, jax {jax.__version__} on {device.platform} ({device.device_kind})"


def aie_table(summary, kind: str) -> str:
    """Markdown table: per token class, peak layer, peak AIE and mean AIE over layers."""
    lines = [
        "| token class | facts | peak layer | peak AIE | mean AIE over layers |",
        "|---|---|---|---|---|",
    ]
    grid = summary.aie[kind]
    for c, cls in enumerate(summary.classes):
        column = grid[:, c]
        if np.all(np.isnan(column)):
            lines.append(f"| {cls} | 0 | - | - | - |")
            continue
        layer = int(np.nanargmax(column))
        lines.append(
            f"| {cls} | {summary.counts[c]} | {layer} | {column[layer]:.4f} | {np.nanmean(column):.4f} |"
        )
    return "\n".join(lines)


def markdown_table(results: dict, rows: list[str], keys: tuple[str, ...], label: str = "method") -> str:
    """A markdown table of `results[row][key]`."""
    lines = [f"| {label} | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {r} | " + " | ".join(str(results[r].get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def wikipedia_statistics(model, layers, samples: int, site: str = "mlp_key") -> dict:
    """Key statistics (`jaxedit.edit.key_statistics`, cached) of `layers` over the first `samples`
    articles of the shared Wikipedia corpus, keyed by layer."""
    from jaxedit.edit import key_statistics
    from jaxedit.edit.stats import read_corpus

    texts = read_corpus(shared_data("corpus", "wikipedia"))[:samples]
    return key_statistics(model, sorted(set(layers)), texts, corpus_id=f"wikipedia:{samples}", site=site)


def mass_setup(model, method: str, records: int, stats_samples: int, **changes):
    """Packaged MEMIT / PMET settings (with `changes`), their statistics over `stats_samples` Wikipedia
    articles and their context templates."""
    import dataclasses

    from jaxedit.edit.contexts import context_templates
    from jaxedit.edit.memit import default_hparams

    hp = dataclasses.replace(default_hparams(model, method), **changes)
    stats = wikipedia_statistics(model, hp.layers, stats_samples)
    return hp, stats, context_templates(model, hp.prefixes)
