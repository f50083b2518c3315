"""Shared pieces of the experiment scripts: their options and start, data paths, the machine's
description, markdown tables."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from jaxedit import Model

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("JAXEDIT_SHARED", ROOT.parent / "shared"))
# results files (elsewhere when JAXEDIT_EXPERIMENT_RESULTS is set: a trial run keeps the committed ones)
RESULTS = Path(os.environ.get("JAXEDIT_EXPERIMENT_RESULTS", ROOT / "experiments" / "results"))
# per-fact caches of resumable runs (outside the repository when JAXEDIT_EXPERIMENT_CACHE is set)
CACHE = Path(os.environ.get("JAXEDIT_EXPERIMENT_CACHE", RESULTS / ".cache"))


def experiment_parser(
    doc: str,
    *,
    n: int | bool | None = False,
    n_help: str | None = None,
    methods: str | None = None,
    stats_samples: int | None = None,
    generation_tokens: int | None = None,
) -> argparse.ArgumentParser:
    """The options the experiments share: `--model` always; `--n`, `--methods`, `--stats-samples` and
    `--generation-tokens` when given a default (`n=None`: all records by default; `False`: no `--n`)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="'smollm2', a HF directory or a .gguf file")
    if n is not False:
        parser.add_argument("--n", type=int, default=n, help=n_help or "first N records")
    if methods is not None:
        parser.add_argument("--methods", default=methods, help="comma-separated")
    if stats_samples is not None:
        parser.add_argument(
            "--stats-samples", type=int, default=stats_samples, help="Wikipedia articles (128 tokens each)"
        )
    if generation_tokens is not None:
        parser.add_argument("--generation-tokens", type=int, default=generation_tokens)
    return parser


_MODEL_LABEL = ["SmolLM2-135M-Instruct"]  # what the results texts call the model (`begin` sets it)


def begin(args: argparse.Namespace, level: int = logging.INFO) -> tuple[float, Model]:
    """An experiment's start: logging at `level`, the clock and the model of `--model` (which the
    results texts then name: `model_label`)."""
    import jaxedit

    logging.basicConfig(level=level, format="%(message)s")
    logging.getLogger("jaxedit").setLevel(level)
    model = jaxedit.load_model(args.model)
    if args.model != "smollm2":
        _MODEL_LABEL[0] = f"{model.name} ({model.config.family}, {model.config.n_layers} layers)"
    return time.perf_counter(), model


def model_label() -> str:
    """The name of the experiment's model: SmolLM2-135M-Instruct, the default, or the `--model` given."""
    return _MODEL_LABEL[0]


def trace_parser(doc: str) -> argparse.ArgumentParser:
    """Command-line options shared by the tracing experiments."""
    from jaxedit.trace.dataset import parse_shapes

    parser = experiment_parser(doc, n=50, n_help="correctly predicted facts to trace")
    parser.add_argument("--samples", type=int, default=10, help="noise samples per fact")
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


def trace_start(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Model, list]:
    """A tracing experiment's start: its parsed options, the model (`begin`) and the facts of
    `rets/known_1000.json`."""
    from jaxedit.data import read_records

    args = parser.parse_args()
    _, model = begin(args)
    return args, model, read_records(shared_data("rets", "known_1000.json"))


def dataset_options(args: argparse.Namespace) -> dict:
    """`trace_dataset` keyword arguments from `trace_parser` options."""
    from jaxedit.runtime.execution import Execution
    from jaxedit.trace import Noise

    return {
        "n": args.n,
        "noise": Noise(samples=args.samples),
        "execution": Execution(
            bucket=args.bucket, workers=args.workers, segments=args.segments, shapes=args.shapes
        ),
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


TARGETS_CACHE = CACHE / "targets"  # `jaxedit.edit.target_store` root of the experiments' targets


def run_cache(name: str, model, args: argparse.Namespace, **extra: object) -> Path:
    """`CACHE/<name>/<digest>/`: an experiment's own cached points, in a folder keyed by the model's
    weight fingerprint, every command-line setting and `extra` (recorded in its `key.json`), so that a
    run with another model, data slice or setting never reads another run's points."""
    import json

    from jaxedit.io.cache import digest

    key = {"fingerprint": model.fingerprint, "model": model.source, "args": vars(args), **extra}
    key = json.loads(json.dumps(key, default=str))
    folder = CACHE / name / digest(key, 16)
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "key.json"
    if not record.exists():
        write_text(record, json.dumps(key, indent=1))
    return folder


def write_text(path: Path, text: str) -> None:
    """Write a results file atomically."""
    from jaxedit.io.files import atomic_write_bytes

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


def cpu_model() -> str:
    """The CPU's model name (as `lscpu` shows it), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


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
