"""The package's architecture, checked from its source: an acyclic import graph (imports
inside functions included), layers that import only downward (the contract `make lint`
runs with import-linter, read from pyproject.toml), no private name used outside its
subpackage, and no package import inside a function."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "dead_directions"


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom, known) -> list[str]:
    """The package modules an import statement imports (a name imported from a package
    that is itself a module counts as that module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        names = [
            f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names
        ]
    out = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    """(module -> modules it imports, [(module, target, line) of imports inside a function
    or class body]), from the source alone (nothing is imported)."""
    known = modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    nested = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(module, path, node, known):
                if target == module:
                    continue
                graph[module].add(target)
                if id(node) not in top:
                    nested.append((module, target, node.lineno))
    return graph, nested


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def layers() -> list[str]:
    """The layers of the import-linter contract in pyproject.toml, highest first."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return list(contract["layers"])


def layer_violations(graph: dict[str, set[str]], order: list[str]) -> list[tuple[str, str]]:
    """Imports from a layer to a higher one (``order`` highest first)."""

    def rank(module: str) -> int | None:
        for i, layer in enumerate(order):
            if module == layer or module.startswith(layer + "."):
                return i
        return None

    out = []
    for source, targets in graph.items():
        for target in targets:
            a, b = rank(source), rank(target)
            if a is not None and b is not None and b < a:
                out.append((source, target))
    return sorted(out)


def test_the_import_graph_is_acyclic():
    graph, _ = import_graph()
    assert len(graph) > 40  # the whole package was parsed
    assert find_cycle(graph) is None, find_cycle(graph)


def test_the_cycle_check_finds_a_cycle():
    graph, _ = import_graph()
    graph[f"{PACKAGE}.core.read"].add(f"{PACKAGE}.cli.sweep")  # sweep reaches core.read
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert f"{PACKAGE}.cli.sweep" in cycle and f"{PACKAGE}.core.read" in cycle


def test_layers_import_only_downward():
    order = layers()
    assert [name.rpartition(".")[2] for name in order] == [
        "cli",
        "analysis",
        "prune",
        "zoo",
        "io",
        "detectors",
        "nn",
        "core",
    ]
    graph, _ = import_graph()
    # every module of the package sits in a layer, apart from the public API and version
    loose = [m for m in graph if not any(m == lay or m.startswith(lay + ".") for lay in order)]
    assert sorted(loose) == [PACKAGE, f"{PACKAGE}.version"]
    assert layer_violations(graph, order) == []
    # the check sees an upward import
    graph[f"{PACKAGE}.io.store"].add(f"{PACKAGE}.analysis.aggregate")
    assert layer_violations(graph, order) == [
        (f"{PACKAGE}.io.store", f"{PACKAGE}.analysis.aggregate")
    ]


def test_no_package_import_inside_a_function():
    _, nested = import_graph()
    assert nested == []


def test_no_private_name_is_used_outside_its_subpackage():
    known = modules()

    def subpackage(module: str) -> str:
        parts = module.split(".")
        return (
            ".".join(parts[:2]) if len(parts) > 2 or known[module].name == "__init__.py" else module
        )

    crossing = []
    for module, path in known.items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for target in _targets(module, path, node, known):
                    for a in node.names:
                        if a.name.startswith("_") and not a.name.startswith("__"):
                            if subpackage(target) != subpackage(module):
                                crossing.append((module, f"{target}.{a.name}"))
                        if f"{target}.{a.name}" in known or target.endswith(a.name):
                            aliases[a.asname or a.name] = target
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in known:
                        aliases[a.asname or a.name] = a.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and subpackage(aliases[node.value.id]) != subpackage(module)
            ):
                crossing.append((module, f"{aliases[node.value.id]}.{node.attr}"))
    assert sorted(set(crossing)) == []


@pytest.mark.parametrize("layer", ["core", "nn", "detectors", "io", "zoo", "prune", "analysis"])
def test_the_library_has_no_commands(layer):
    """Commands (``cmd_*``, ``add_parser``) live in the CLI layer only."""
    found = []
    for module, path in modules().items():
        if not module.startswith(f"{PACKAGE}.{layer}"):
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and (
                node.name.startswith("cmd_") or node.name == "add_parser"
            ):
                found.append(f"{module}.{node.name}")
    assert found == []
