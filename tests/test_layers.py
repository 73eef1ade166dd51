"""The library's architecture, checked: layers import only downwards, no module reaches
into another's private names, no import cycle, and modules and functions stay short.

The layers, bottom up (chapters/library.md draws them):

    operators  <-  curvature  <-  geometry, manifolds  <-  sources

with ``lib.book`` (the book's infrastructure) and ``lib._checks`` beside them: any layer may
use them, and they use no layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "lib"
RANK = {"_checks": 0, "book": 0, "operators": 1, "curvature": 2, "geometry": 3, "manifolds": 3, "sources": 4}
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60  # lines of code and comments, without the docstring
LONG_REASON = "# long because"  # a function over the limit says why, in a comment inside it


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of lib."""
    out = {}
    for path in sorted(LIB.rglob("*.py")):
        parts = path.relative_to(LIB.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imports(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported lib module, names taken from it) for every import of another lib module."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text("utf8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "lib" or target.startswith("lib."):
                out.append((target, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names if alias.name.startswith("lib.")]
    return out


def resolve(target: str, names: list[str], known: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """``from lib.x import y`` where ``y`` is a submodule means module ``lib.x.y``."""
    subs = [name for name in names if f"{target}.{name}" in known]
    rest = [name for name in names if name not in subs]
    return [(f"{target}.{name}", []) for name in subs] + ([(target, rest)] if rest or not subs else [])


EDGES = [(module, target, names)
         for module, path in modules().items()
         for raw, raw_names in imports(module, path)
         for target, names in resolve(raw, raw_names, modules())]


@pytest.mark.parametrize("module, target, names", EDGES, ids=[f"{m}->{t}" for m, t, _ in EDGES])
def test_imports_go_down_the_layers(module, target, names):
    here, there = layer(module), layer(target)
    if here is None or there is None or here == there:
        return  # lib/__init__.py gathers the layers; a layer may use its own modules
    assert RANK[there] < RANK[here] or there == "_checks", (
        f"{module} (layer {here}) imports {target} (layer {there}): imports only go down")


@pytest.mark.parametrize("module, target, names", EDGES, ids=[f"{m}->{t}" for m, t, _ in EDGES])
def test_no_module_takes_another_modules_private_names(module, target, names):
    private = [name for name in names if name.startswith("_") and not name.startswith("__")]
    assert not private, f"{module} imports private {private} from {target}: make them public in their owner"


def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for module, target, _ in EDGES:
        if target != module and not module.startswith(target + "."):  # a package's own __init__
            graph.setdefault(module, set()).add(target)
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("module", sorted(modules()))
def test_modules_are_short(module):
    lines = len(modules()[module].read_text("utf8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines (> {MAX_MODULE_LINES}): split it"


def docstring_lines(node: ast.FunctionDef) -> int:
    """Lines of a function's docstring: documentation is not what makes a function long."""
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.end_lineno - first.lineno + 1
    return 0


@pytest.mark.parametrize("module", sorted(modules()))
def test_long_functions_say_why(module):
    source = modules()[module].read_text("utf8")
    lines = source.splitlines()
    too_long = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1 - docstring_lines(node)
            body = "\n".join(lines[node.lineno - 1:node.end_lineno])
            if length > MAX_FUNCTION_LINES and LONG_REASON not in body:
                too_long.append(f"{node.name} ({length} lines)")
    assert not too_long, (f"{module}: {', '.join(too_long)} exceed {MAX_FUNCTION_LINES} lines; "
                          f"split them or say why in a '{LONG_REASON} ...' comment")


def test_the_library_pages_example_runs():
    """The 'Adding a curvature matrix' example of chapters/library.md works as printed."""
    page = (LIB.parent / "chapters" / "library.md").read_text("utf8")
    code = page.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "library.md", "exec"), namespace)
    G, J = namespace["G"], namespace["G"].J
    dense = J.T @ J
    assert abs(G.trace() - float(dense.trace())) < 1e-9 * float(dense.trace())
    import torch

    assert (G.eigvalsh(3) - torch.linalg.eigvalsh(dense)[-3:]).abs().max() < 1e-9 * float(dense.norm())
