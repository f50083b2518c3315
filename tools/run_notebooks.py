"""Execute the notebooks top to bottom and store their outputs, so they read well on a repository page.

Each notebook runs in a fresh kernel with `notebooks/` as its working directory. Values in the cell
tagged `parameters` can be overridden (`--set NAME=VALUE`, a Python literal). Outputs are scrubbed of
this machine's paths (the repository root becomes `<repo>`, the home directory `~`, temporary folders
`<tmp>`), and the notebook is written atomically in place (or to `--out`).

    python tools/run_notebooks.py [notebooks/quickstart.ipynb ...] [--set TRACE_SAMPLES=3] [--timeout 1200]
"""

from __future__ import annotations

import argparse
import ast
import re
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def set_parameters(notebook: nbformat.NotebookNode, values: dict[str, object]) -> None:
    """Replace `NAME = ...` assignments in the `parameters` cell (every name must be assigned there)."""
    cells = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if values and not cells:
        raise ValueError("the notebook has no cell tagged 'parameters'")
    for name, value in values.items():
        pattern = re.compile(rf"^{re.escape(name)} = [^#\n]*?(\s*#.*)?$", re.MULTILINE)
        if not pattern.search(cells[0].source):
            raise ValueError(f"parameter {name!r} is not assigned in the parameters cell")
        cells[0].source = pattern.sub(
            lambda m, n=name, v=value: f"{n} = {v!r}{m.group(1) or ''}", cells[0].source
        )


def scrub(text: str) -> str:
    """This machine's absolute paths out of an output text."""
    text = text.replace(str(ROOT), "<repo>").replace(str(ROOT.parent), "<repo>/..")
    text = re.sub(re.escape(tempfile.gettempdir()) + r"/[^\s'\"]*", "<tmp>", text)
    return text.replace(str(Path.home()), "~")


def scrub_outputs(notebook: nbformat.NotebookNode) -> None:
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                output["text"] = scrub(output["text"])
            for kind, value in output.get("data", {}).items():
                if kind.startswith("text/") and isinstance(value, str):
                    output["data"][kind] = scrub(value)
            if "traceback" in output:
                output["traceback"] = [scrub(line) for line in output["traceback"]]


def execute(path: Path, values: dict[str, object], timeout: int) -> nbformat.NotebookNode:
    """The notebook at `path` executed (a cell error raises `nbclient.exceptions.CellExecutionError`)."""
    notebook = nbformat.read(path, as_version=4)
    set_parameters(notebook, values)
    NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    scrub_outputs(notebook)
    return notebook


def write_atomically(notebook: nbformat.NotebookNode, path: Path) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".ipynb", delete=False) as handle:
        nbformat.write(notebook, handle)
    Path(handle.name).chmod(0o644)
    Path(handle.name).replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--out", type=Path, help="write here instead of in place (one notebook)")
    args = parser.parse_args()
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.out and len(paths) != 1:
        raise SystemExit("--out takes exactly one notebook")
    values = {}
    for item in args.set:
        name, sep, literal = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants NAME=VALUE, got {item!r}")
        values[name.strip()] = ast.literal_eval(literal.strip())
    for path in paths:
        start = time.perf_counter()
        notebook = execute(path.resolve(), values, args.timeout)
        write_atomically(notebook, (args.out or path).resolve())
        print(f"{path}: executed in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
