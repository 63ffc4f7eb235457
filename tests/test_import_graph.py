"""Imports point one way (STYLE.md): interfaces -> pipeline -> evaluation, datasets -> toy -> core, config; no module
of the package imports, directly or through others, a module that imports it back; the core never imports Ray.

The layers and the Ray ban are import-linter contracts in pyproject.toml ([tool.importlinter]); `lint-imports`
runs the same check from a shell. Cycles are found on grimp's graph of the package, which counts imports inside
functions as well (they are cycles all the same, only deferred to the first call).
"""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = "handsoff_ray"


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(PACKAGE, include_external_packages=True)


def strongly_connected_components(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of nodes that reach one another, each sorted; single nodes included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return components


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Each group of package modules that import one another in a circle (a module importing itself counts)."""
    modules = sorted(m for m in graph.modules if m == PACKAGE or m.startswith(PACKAGE + "."))
    edges = {m: {d for d in graph.find_modules_directly_imported_by(m) if d in modules} for m in modules}
    return [c for c in strongly_connected_components(modules, edges) if len(c) > 1 or c[0] in edges[c[0]]]


class TestStronglyConnectedComponents:
    def test_finds_each_cycle_and_nothing_else(self):
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": set(), "f": {"f"}}
        assert sorted(strongly_connected_components(list(edges), edges)) == [["a", "b", "c"], ["d"], ["e"], ["f"]]

    def test_long_chain_has_no_cycle(self):
        edges = {f"m{i}": {f"m{i + 1}"} for i in range(200)}
        assert all(len(c) == 1 for c in strongly_connected_components([*edges, "m200"], edges))


def test_no_import_cycles_between_package_modules(graph):
    cycles = import_cycles(graph)
    described = []
    for cycle in cycles:
        links = sorted(f"{a} -> {b}" for a in cycle for b in graph.find_modules_directly_imported_by(a) if b in cycle)
        described.append(f"{', '.join(cycle)}:\n    " + "\n    ".join(links))
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(described)


def test_import_contracts_are_kept(capsys):
    """The layers and the Ray ban of [tool.importlinter]; the failure shows each import chain that breaks one."""
    from importlinter.cli import lint_imports

    exit_code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert exit_code == 0, capsys.readouterr().out


def test_private_names_stay_in_their_module():
    """`from handsoff_ray.x import _name` couples two modules through a name one of them calls private: a
    name another module needs is public (ray.data's rule). Tests may still reach into a module."""
    import ast

    crossings = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    crossings.append(f"{path.relative_to(ROOT)}: from {node.module} import {', '.join(private)}")
    assert crossings == [], "\n".join(crossings)
