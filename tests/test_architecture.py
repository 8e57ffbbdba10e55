"""The dependency direction of the engine's packages, read from the source with ``ast``: no import cycle between
stage packages (module-level and function-level imports alike), and ``engine.core`` (the model contract, errors,
progress) imports no other engine package."""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"


def _imported_modules(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """(absolute module name, line) of every import in ``tree``, at any depth (functions included)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno


def package_edges(root: Path = ENGINE) -> dict[str, dict[str, str]]:
    """Package -> {imported engine package: first 'file:line' that imports it}, between ``root``'s subpackages."""
    edges: dict[str, dict[str, str]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if len(parts) < 2:  # engine/__init__.py belongs to no stage
            continue
        source = parts[0]
        for module, line in _imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            names = module.split(".")
            if names[0] == "engine" and len(names) > 1 and names[1] != source:
                where = f"{path.relative_to(root.parent)}:{line}"
                edges.setdefault(source, {}).setdefault(names[1], where)
    return edges


def find_cycle(edges: Mapping[str, Mapping[str, str]]) -> list[str] | None:
    """One cycle of packages (first package repeated at the end), or None: a depth-first search for a back edge."""
    state: dict[str, str] = {}  # "open" while on the stack, "done" after

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], node, nxt] if nxt in stack else [node, nxt]
            if nxt not in state:
                found = visit(nxt, [*stack, node])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start, [])
            if found:
                return found
    return None


def _describe(cycle: list[str], edges: Mapping[str, Mapping[str, str]]) -> str:
    return "; ".join(f"{a} -> {b} ({edges[a][b]})" for a, b in itertools.pairwise(cycle))


def test_cycle_finder_on_hand_made_graphs() -> None:
    assert find_cycle({"a": {"b": ""}, "b": {"c": ""}}) is None
    assert find_cycle({"a": {"b": ""}, "b": {"a": ""}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b": ""}, "b": {"c": ""}, "c": {"b": ""}}) == ["b", "c", "b"]


def test_package_edges_see_function_level_imports(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "one" / "a.py").write_text("def f():\n    from engine.two.b import g\n    return g\n")
    (tmp_path / "two" / "b.py").write_text("import engine.one.a\n")
    edges = package_edges(tmp_path)
    assert edges == {"one": {"two": f"{tmp_path.name}/one/a.py:2"}, "two": {"one": f"{tmp_path.name}/two/b.py:1"}}
    assert find_cycle(edges) == ["one", "two", "one"]


def test_no_import_cycle_between_engine_packages() -> None:
    edges = package_edges()
    cycle = find_cycle(edges)
    assert cycle is None, f"import cycle between engine packages: {_describe(cycle, edges)}"


def test_core_imports_no_other_engine_package() -> None:
    assert package_edges().get("core", {}) == {}, "engine.core must stay the bottom layer"
