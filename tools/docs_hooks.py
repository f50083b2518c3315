"""MkDocs hook: the Benchmarks page, generated at build time from the JSON the benchmarks write
(`tools/bench_*.py --json`, committed under `experiments/results/bench_json/`), never narrated by hand.

One table row per run (and per candidate or method where a benchmark measures several): the machine, the
versions, jaxedit's and the reference's seconds with the spread of repeated runs where the benchmark
timed several, and the steady and cold ratios (reference / jaxedit; cold: a fresh process, compile
included).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "experiments" / "results" / "bench_json"
HEADER = (
    "| benchmark | run | CPU | cores | jax | jaxedit s | reference s | steady ratio | cold ratio | notes |\n"
    "|---|---|---|---|---|---|---|---|---|---|\n"
)


def _seconds(value: Any) -> str:
    """A time in seconds, or a timing summary as `median (min-max, n runs)`."""
    if isinstance(value, dict) and "median_s" in value:
        return f"{value['median_s']:.3f} ({value['min_s']:.3f}-{value['max_s']:.3f}, {value['runs']} runs)"
    return "" if value is None else f"{value:.3f}"


def _ratio(value: Any) -> str:
    return "" if value is None else f"{value:.2f}"


def rows(name: str, record: dict) -> list[list[str]]:
    """The table rows of one benchmark JSON file (`name`: its file name without `.json`)."""
    machine = [record.get("cpu", ""), str(record.get("cores", "")), record.get("jax", "")]
    kind = record.get("benchmark", name)
    if kind == "cpu_paths":
        reference = record.get("transformers_ms", 0) / 1000
        return [
            [kind, f"{name}: {label}", *machine, _seconds(c["forward_ms"] / 1000), _seconds(reference),
             _ratio(c.get("ratio")), "", f"{c['of_peak'] * 100:.0f} % of peak, logits {c['diff_torch']:.1e}"]
            for label, c in record.get("candidates", {}).items()
        ]  # fmt: skip
    if kind == "mass":
        return [
            [kind, f"{name}: {r['method']} x {r['n']}", *machine, _seconds(r["jax_s"]), _seconds(r["ref_s"]),
             _ratio(r.get("ratio")), _ratio(r.get("ratio_with_compile")), f"cold: with compile ({r['jax_compile_s']:.1f} s)"]
            for r in record.get("rows", [])
        ]  # fmt: skip
    ours = record.get("jaxedit", record.get("steady_s"))
    theirs = record.get("transformers", record.get("reference_s"))
    notes = []
    if "programs" in record:
        notes.append(f"{record['programs']} programs, compile {record.get('compile_s', 0):.1f} s")
    if "grid_compile_serial_s" in record:
        notes.append(f"grid programs compiled one at a time {record['grid_compile_serial_s']:.1f} s")
    for key in ("max_logit_diff", "max_diff", "delta_diff"):
        if key in record:
            notes.append(f"{key} {record[key]:.1e}")
    row = [kind, name, *machine, _seconds(ours), _seconds(theirs), _ratio(record.get("ratio")),
           _ratio(record.get("ratio_cold")), ", ".join(notes)]  # fmt: skip
    return [row]


def history(records: dict[str, dict]) -> list[str]:
    """One row per benchmark (and mass-editing method and size) and CPU: its ratios run after run, in the
    order of the files' names (`bench_<name>_<cpu>_<date>[_b]`), so each change shows against the run
    before it on the same kind of machine."""
    runs: dict[tuple[str, str], list[str]] = {}
    for name, record in records.items():
        kind, cpu = record.get("benchmark", name), record.get("cpu", "")
        measured = [(kind, record)] if "ratio" in record else []
        measured += [(f"{kind} {r['method']} x {r['n']}", r) for r in record.get("rows", []) if "ratio" in r]
        for label, figures in measured:
            cold = figures.get("ratio_cold", figures.get("ratio_with_compile"))
            runs.setdefault((label, cpu), []).append(f"{name}: {_ratio(figures['ratio'])} / {_ratio(cold)}")
    return [f"| {label} | {cpu} | " + " → ".join(seen) + " |" for (label, cpu), seen in sorted(runs.items())]


def benchmarks_page(folder: Path = FIGURES) -> str:
    """The Benchmarks page's markdown from every JSON file in `folder`."""
    lines = []
    records = {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}
    for name, record in records.items():
        lines += ["| " + " | ".join(row) + " |" for row in rows(name, record)]
    return (
        "# Benchmarks\n\n"
        "Generated when the docs are built (`tools/docs_hooks.py`) from the JSON files the benchmarks "
        "write (`python tools/bench_<name>.py --json FILE`), committed in "
        "`experiments/results/bench_json/`. Ratios are the PyTorch reference's wall time over jaxedit's "
        "on the same machine in the same run: steady with compile excluded, cold in a fresh process with "
        "an empty compile cache, compile included; model loading is excluded on both sides. Times are "
        "seconds: a median with its spread where the benchmark repeated the work. How each benchmark "
        "works and what it compares: [Performance](performance.md).\n\n" + HEADER + "\n".join(lines) + "\n"
        "\n## Before and after\n\nEach benchmark's steady / cold ratio run after run on each kind of CPU "
        "(earliest first): a change to the code shows against the run before it on the same kind of "
        "machine; ratios from different machines of one kind still differ by their noise.\n\n"
        "| benchmark | CPU | runs: steady / cold ratio |\n|---|---|---|\n"
        + "\n".join(history(records))
        + "\n"
    )


# files outside docs/ that the pages link to (`../experiments/results/...`, `../notebooks/...`): served
# under `repo/` with the links rewritten, so the link check covers them too
OUTSIDE = {"experiments/results": ("*.md", "*.png", "*.log"), "notebooks": ("*.ipynb",)}


def on_files(files: Any, config: Any) -> Any:
    """MkDocs event: add the generated Benchmarks page and the linked files from outside docs/."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, "benchmarks.md", content=benchmarks_page()))
    for folder, patterns in OUTSIDE.items():
        for pattern in patterns:
            for path in sorted((ROOT / folder).glob(pattern)):
                files.append(File.generated(config, f"repo/{folder}/{path.name}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: a top-level page's links out of docs/ point at the copies under `repo/`."""
    if "/" in page.file.src_uri:  # the API pages and the copied results link only among themselves
        return markdown
    return markdown.replace("](../README.md)", "](index.md)").replace("](../", "](repo/")
