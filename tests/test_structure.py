"""The package keeps its shape (docs/architecture.md): no import cycle between its modules (imports
inside functions included), no module over 600 lines and no function over 80 lines, the embedded
renderer (``dakd/data/scenes/``, whose files the shipped weights are tied to) aside."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dakd"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at the top or inside a function."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_by_hand():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(import_graph(modules())) == []


def _ours(path: Path) -> bool:
    return "scenes" not in path.relative_to(PACKAGE).parts


@pytest.mark.parametrize("limit", [MAX_MODULE_LINES])
def test_every_module_fits_its_room(limit):
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in modules().values()
        if _ours(p) and (n := p.read_text().count("\n")) > limit
    }
    assert long == {}


def test_every_function_fits_a_screen():
    long = {}
    for path in modules().values():
        if not _ours(path):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.name}"] = lines
    assert long == {}


#: The package's layers, lowest first (docs/architecture.md). A module may import its own
#: subpackage and any lower layer, never a higher one or a sibling of its own layer; the method
#: itself (the first layer) is one room whose parts import each other (without a cycle).
LAYERS = (
    (
        "dakd.paradigms",
        "dakd.losses",
        "dakd.loss_terms",
        "dakd.config",
        "dakd.data",
        "dakd.models",
        "dakd.optional_deps",
        "dakd.tabular",
    ),
    ("dakd.runtime",),
    ("dakd.teacher", "dakd.evaluation"),
    ("dakd.engine",),
    ("dakd.recipes", "dakd.tracking", "dakd.cluster"),
    ("dakd.sweep",),  # the package's __init__: Ray's environment, set before ray is imported
    ("dakd.sweep.spec",),
    ("dakd.sweep.remote",),
    ("dakd.sweep.driver",),
    ("dakd.__main__",),
)


def room(module: str) -> tuple[int, str] | None:
    """The layer and the subpackage a module belongs to (the longest prefix listed)."""
    best = None
    for rank, rooms in enumerate(LAYERS):
        for name in rooms:
            if (module == name or module.startswith(name + ".")) and (
                best is None or len(name) > len(best[1])
            ):
                best = (rank, name)
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in graph.items():
        here = room(module)
        for target in targets:
            there = room(target)
            if here is None or there is None or there[1] == here[1]:
                continue
            if there[0] > here[0] or (there[0] == here[0] and here[0] != 0):
                found.append(f"{module} -> {target}")
    return sorted(found)


def test_the_layer_rule_finds_an_upward_import_by_hand():
    graph = {
        "dakd.engine.trainer": {"dakd.recipes.stages", "dakd.runtime.device"},
        "dakd.teacher.outputs": {"dakd.evaluation.segmentation", "dakd.teacher.cache"},
        "dakd.sweep.remote.trial": {"dakd.sweep.spec.context", "dakd.sweep.driver.run"},
        "dakd.config.data": {"dakd.data.datasets"},
    }
    assert upward_imports(graph) == [
        "dakd.engine.trainer -> dakd.recipes.stages",
        "dakd.sweep.remote.trial -> dakd.sweep.driver.run",
        "dakd.teacher.outputs -> dakd.evaluation.segmentation",
    ]


def test_every_module_has_a_layer():
    assert [m for m in modules() if m != "dakd" and room(m) is None] == []


def test_no_module_imports_from_a_layer_above_its_own():
    assert upward_imports(import_graph(modules())) == []
