"""Shared pieces of the experiment scripts: data paths, machine description, markdown tables."""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("JAXEDIT_SHARED", ROOT.parent / "shared"))
RESULTS = ROOT / "experiments" / "results"
# per-fact caches of resumable runs (outside the repository when JAXEDIT_EXPERIMENT_CACHE is set)
CACHE = Path(os.environ.get("JAXEDIT_EXPERIMENT_CACHE", RESULTS / ".cache"))


def trace_parser(doc: str) -> argparse.ArgumentParser:
    """Command-line options shared by the tracing experiments."""
    from jaxedit.trace.dataset import parse_shapes

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
        "--max-minutes",
        type=float,
        default=None,
        help="time budget: average the facts traced by then (for accelerators, whose compile time varies)",
    )
    parser.add_argument(
        "--shapes",
        default="auto",
        type=parse_shapes,
        help="'bucket' (CPU default), 'single' (one padded shape: one program per kind; accelerators' "
        "default) or k (prompts grouped by length into k padded shapes)",
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
        "max_seconds": None if args.max_minutes is None else 60 * args.max_minutes,
    }


def untraced_note(summary: object) -> str:
    """A sentence for a run whose time budget ended before every known fact was traced, else ''."""
    left = getattr(summary, "n_untraced", 0)
    if not left:
        return ""
    return (
        f" The run's time budget ended with {left} further known facts untraced: the averages cover the "
        f"first {summary.n_facts}."
    )


def command(name: str, args: argparse.Namespace, **extra: object) -> str:
    """The command line that reproduces a run (model path omitted when it is the default)."""
    options = {"n": args.n, "samples": args.samples, "bucket": args.bucket, **extra}
    if args.workers != 1:
        options["workers"] = args.workers
    if getattr(args, "max_minutes", None) is not None:
        options["max-minutes"] = args.max_minutes
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


def targets_folder(model, hp, templates, root: Path | None = None) -> Path:
    """`<root>/<settings digest>/` (root: `CACHE/targets`); in `CACHE/targets` the files of folders named
    by the earlier digests of the whole `TargetHparams` (with and without the `key_token` field added
    for RETS) are moved into it."""
    import dataclasses
    import shutil

    base = {"model": model.fingerprint, "layer": max(hp.layers), "templates": list(templates)}
    root = CACHE / "targets" if root is None else root
    folder = root / digest({**base, "targets": target_settings(hp)})
    whole = dataclasses.asdict(hp.targets)
    legacy = [whole]
    if hp.targets.key_token == "subject":
        legacy.append({k: v for k, v in whole.items() if k != "key_token"})
    for old in legacy:
        old_folder = root / digest({**base, "targets": old})
        if old_folder.exists() and old_folder != folder:
            folder.mkdir(parents=True, exist_ok=True)
            for path in old_folder.glob("*.npz"):
                if not (folder / path.name).exists():
                    path.rename(folder / path.name)
            shutil.rmtree(old_folder)
    return folder


RESUME_EVERY = 100
KEPT = ("delta", "m0", "delta_attn", "nll", "steps")  # what `memit` reads of `Targets`


def _stored_rows(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """Request digest → kept arrays, from every file in `folder` (group files hold a `requests` array
    of digests; files of the earlier one-request format are named by their request's digest)."""
    rows: dict[str, dict[str, np.ndarray]] = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as data:
            names = [str(n) for n in data["requests"]] if "requests" in data.files else [path.stem]
            for row, name in enumerate(names):
                rows[name] = {k: data[k][row] for k in KEPT if k in data.files}
    return rows


def stored_target_time(model, hp, templates, root: Path) -> tuple[int, float]:
    """Edits in the target store of these settings and the seconds their optimisation took."""
    folder = targets_folder(model, hp, templates, root)
    edits, seconds = 0, 0.0
    for path in sorted(folder.glob("*.npz")) if folder.exists() else []:
        with np.load(path) as data:
            edits += len(data["requests"]) if "requests" in data.files else 1
            seconds += float(data["seconds"]) if "seconds" in data.files else float("nan")
    return edits, seconds


def cached_targets(model, requests, hp, templates, root: Path | None = None):
    """`memit_targets` for `requests`, kept under `targets_folder(..., root)` in files of up to
    `RESUME_EVERY` requests. A request's target does not depend on the other requests of its batch, so
    the experiments that edit the same records with the same settings (scaling, mass editing, ablations)
    optimise each target once, and an interrupted run of thousands resumes from its last file (each file
    records the seconds its optimisation took: `stored_target_time`). Missing
    requests are optimised in `chunk_order` (similar lengths together). Kept: what `memit` reads (δ,
    m0, PMET's δa, the final NLL and step count); the keys and loss histories come back as zero-width
    arrays."""
    from jaxedit.edit.memit import memit_targets
    from jaxedit.edit.targets import Targets, build_batch, chunk_order

    folder = targets_folder(model, hp, templates, root)
    stored = _stored_rows(folder) if folder.exists() else {}
    names = [digest(r.to_dict()) for r in requests]
    first_of = {name: i for i, name in reversed(list(enumerate(names)))}
    missing = [i for name, i in first_of.items() if name not in stored]
    if missing:
        todo = [requests[i] for i in missing]
        batch = build_batch(model, todo, templates, hp.targets.kl_prompt, hp.targets.key_token)
        missing = [missing[j] for j in chunk_order(batch, len(todo))]
    # saved every `RESUME_EVERY` requests, so an interrupted run of thousands resumes where it stopped
    for first in range(0, len(missing), RESUME_EVERY):
        group = missing[first : first + RESUME_EVERY]
        if len(missing) > RESUME_EVERY:
            print(f"targets {first + 1}-{first + len(group)} of {len(missing)} missing", flush=True)
        start = time.perf_counter()
        fresh = memit_targets(model, [requests[i] for i in group], hp, templates=templates)
        seconds = np.float64(time.perf_counter() - start)
        arrays = {k: getattr(fresh, k) for k in KEPT if getattr(fresh, k) is not None}
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{names[group[0]]}.npz"
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, requests=np.asarray([names[i] for i in group]), seconds=seconds, **arrays)
        tmp.replace(path)
        for row, i in enumerate(group):
            stored[names[i]] = {k: v[row] for k, v in arrays.items()}
    kept = {k: np.stack([stored[name][k] for name in names]) for k in KEPT if k in stored[names[0]]}
    empty = np.zeros((len(names), 0), np.float32)
    return Targets(key=empty, key_mean=empty, loss=empty, **kept)


def write_text(path: Path, text: str) -> None:
    """Write a results file atomically."""
    from jaxedit.files import atomic_write_bytes

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
    flags = os.environ.get("XLA_FLAGS", "").strip()
    return (
        f"{platform.machine()} {os.cpu_count()} CPU cores, jax {jax.__version__} on {device.platform} "
        f"({device.device_kind})" + (f", XLA_FLAGS `{flags}`" if flags else "")
    )


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

    texts = read_corpus(shared_data("corpus", "wikipedia"))
    return key_statistics(
        model, sorted(set(layers)), texts, samples=samples, corpus_id="wikipedia", site=site
    )


def mass_setup(model, method: str, records: int, stats_samples: int | None, **changes):
    """Packaged MEMIT / PMET settings (with `changes`), their statistics over `stats_samples` Wikipedia
    articles and their context templates; `stats_samples=None`: only the settings and templates."""
    import dataclasses

    from jaxedit.edit.contexts import context_templates
    from jaxedit.edit.memit import default_hparams

    hp = dataclasses.replace(default_hparams(model, method), **changes)
    templates = context_templates(model, hp.prefixes)
    if stats_samples is None:
        return hp, templates
    return hp, wikipedia_statistics(model, hp.layers, stats_samples), templates
