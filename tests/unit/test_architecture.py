"""Dependencies point one way: no import circles between scalequest modules, executors below the runner.

Read from the source with `ast`, so nothing is imported and the test needs none of the heavy packages.
An import inside a function still closes a circle when that function runs, so those imports are checked
too, in a test of their own: a circle through a lazy import is a design problem, not just a load-order one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "scalequest"
# The executors run a stage's shards; the runner, the pipeline and the CLI sit above them and call them.
ABOVE_EXECUTORS = ("scalequest.runner", "scalequest.pipeline", "scalequest.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted((SRC / PACKAGE).rglob("*.py"))}


DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def is_type_checking(node: ast.If) -> bool:
    # `if TYPE_CHECKING:` imports never run, so they cannot close a circle at run time.
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The scalequest modules one import statement loads (the deepest module each name resolves to)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: `from . import x` inside package p is p.x
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    # `from a import b` loads module a.b when b is a module, otherwise it takes a name from a.
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]


def internal(name: str) -> str | None:
    """The scalequest module an imported name is (or lives in); None for third-party imports."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(module: str) -> tuple[set[str], dict[str, set[str]]]:
    """What `module` imports: at module level, and inside functions only (imported module -> functions)."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    top: set[str] = set()
    lazy: dict[str, set[str]] = {}

    def visit(node: ast.AST, scope: tuple[str, ...], function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                for other in child.orelse:
                    visit(other, scope, function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for name in imported_names(child, module):
                    target = internal(name)
                    if target and target != module and function is None:
                        top.add(target)
                    elif target and target != module:
                        lazy.setdefault(target, set()).add(function)
            inner = scope + (child.name,) if isinstance(child, DEFINITIONS) else scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and function is None:
                visit(child, inner, ".".join(inner) or "<lambda>")
            else:
                visit(child, inner, function)

    visit(tree, (), None)
    return top, {target: functions for target, functions in lazy.items() if target not in top}


GRAPH = {module: import_edges(module) for module in MODULES}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def describe(component: list[str], edges: dict[str, set[str]]) -> str:
    members = set(component)
    links = sorted(f"{a} -> {b}" for a in component for b in edges[a] if b in members)
    return "; ".join(links)


def test_the_graph_sees_the_package():
    # Guards the parser: a test over an empty graph would pass whatever the code does.
    assert "scalequest.runner" in MODULES and "scalequest.executors.local" in MODULES
    assert "scalequest.io" in GRAPH["scalequest.runner"][0]


def test_no_import_circle_at_module_level():
    edges = {module: top for module, (top, _) in GRAPH.items()}
    assert not (found := cycles(edges)), "\n".join(describe(c, edges) for c in found)


def test_no_import_circle_through_imports_inside_functions():
    edges = {module: top | set(lazy) for module, (top, lazy) in GRAPH.items()}
    assert not (found := cycles(edges)), "\n".join(describe(c, edges) for c in found)


def test_the_stage_interface_never_calls_the_runner():
    # The runner runs stages; a stage reaching back up to it (even lazily) was the circle this test guards.
    top, lazy = GRAPH["scalequest.stage"]
    assert "scalequest.runner" not in top | set(lazy)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("scalequest.executors")))
def test_executors_never_import_what_sits_above_them(module):
    top, lazy = GRAPH[module]
    assert not (top | set(lazy)) & set(ABOVE_EXECUTORS)
