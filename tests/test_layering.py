"""The package's layers, read from its import statements: no import cycle at module level, the decoder
core imports nothing above it, and checkpoint IO imports no method (tracing, editing, evaluation, lens,
CLI)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxedit"
# the decoder and the values every layer shares: what a forward pass, generation and a mesh need
CORE = {
    "config", "layout", "model", "model_value", "interventions", "tokens", "generate", "predict", "readout",
    "sharding", "adaptor", "errors", "files", "fingerprint", "display", "row_blocks", "side_by_side",
    "compile_log", "compile_cache", "cache", "execution",
}  # fmt: skip
IO = {"loading", "checkpoints", "gguf_io", "families", "flax_export"}
METHODS = {"trace", "edit", "evaluate", "lens", "cli", "demo", "plan", "data"}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("jaxedit", *path.relative_to(PACKAGE).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path], top_level_only: bool) -> set[str]:
    """The jaxedit modules `path` imports (`from jaxedit import x` names the submodule x)."""
    tree = ast.parse(path.read_text())
    nodes = [n for stmt in tree.body for n in ast.walk(stmt)] if not top_level_only else []
    if top_level_only:
        for stmt in tree.body:
            nodes += [stmt, *(stmt.body if isinstance(stmt, ast.If | ast.Try) else [])]
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxedit"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(known)
            out |= subs | ({node.module} if len(subs) < len(node.names) else set())
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("jaxedit")}
    return out & set(known)


def group(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_no_import_cycle_at_module_level() -> None:
    known = modules()
    graph = {m: imports(p, known, top_level_only=True) for m, p in known.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_lower_layers_import_nothing_above_them() -> None:
    known = modules()
    wrong = []
    for module, path in known.items():
        deps = {group(d) for d in imports(path, known, top_level_only=False)} - {""}
        if group(module) in CORE and deps - CORE:
            wrong.append(f"{module} (core) imports {sorted(deps - CORE)}")
        if group(module) in IO and deps & METHODS:
            wrong.append(f"{module} (io) imports {sorted(deps & METHODS)}")
    assert not wrong, wrong
    # model shapes, FLOP counts, process groups, sharded checkpoints of edited models (above edit), files
    scale = {"presets", "flops", "distributed", "sharded_checkpoint", "hparams"}
    unplaced = {group(m) for m in known} - CORE - IO - METHODS - scale - {""}
    assert not unplaced, f"modules in no layer: {sorted(unplaced)}"
