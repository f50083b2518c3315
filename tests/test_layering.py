"""The package's layers, read from its import statements: no import cycle at module level, and no
module imports from a layer above its own. The layers, lowest first:

  base     errors, display: exceptions and notebook rendering every layer shares
  runtime  execution policy, compile cache and log, CPU row blocks and threads
  core     the decoder: config, layout, forward, interventions, tokens, generation, readout, sharding
  io       checkpoint readers and writers, GGUF, the families' name tables, owned files, caches
  methods  tracing, editing, evaluation, lens, records and hparams
  scale    presets, plans, FLOP counts, process groups, sharded checkpoints of edited models
  app      the CLI and the demo
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxedit"
LAYERS = (
    {"errors", "display"},
    {"runtime"},
    {"core"},
    {"io"},
    {"data", "hparams", "trace", "edit", "evaluate", "lens"},
    {"scale"},
    {"cli", "demo"},
)


def layer(group_name: str) -> int:
    for index, members in enumerate(LAYERS):
        if group_name in members:
            return index
    raise AssertionError(f"{group_name} is in no layer")


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


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    known = modules()
    wrong = []
    for module, path in known.items():
        if module == "jaxedit":  # the package's re-exports
            continue
        for dep in sorted(imports(path, known, top_level_only=False)):
            if group(dep) and layer(group(dep)) > layer(group(module)):
                wrong.append(f"{module} imports {dep}")
    assert not wrong, wrong


def test_every_module_is_in_a_layer() -> None:
    unplaced = {group(m) for m in modules()} - set().union(*LAYERS) - {""}
    assert not unplaced, f"modules in no layer: {sorted(unplaced)}"


def code_words(path: Path) -> set[str]:
    """Identifiers, attribute names and string constants of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.add(node.value)
    return words


def test_the_decoder_knows_no_editing_method() -> None:
    """iReVa's gate reaches the forward only through the decoder's MLP hook (`MLP_EXTRA`)."""
    named = {
        path.name: sorted(w for w in code_words(path) if "adaptor" in w.lower() or "ireva" in w.lower())
        for path in (PACKAGE / "core").glob("*.py")
    }
    assert not {name: words for name, words in named.items() if words}
