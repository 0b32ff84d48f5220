"""The house: imports go one way (no circles, no upward arrows) and no module grows too large.

Every import counts, at module level or inside a function: a lazy import is still an arrow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "labcheck"
MAX_LINES = 500
MAX_LINES_SANDBOX = 700


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The labcheck module an imported name lives in (a module, or a package's __init__)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(path: Path, module: str) -> set[str]:
    """The labcheck modules a file imports, wherever the import statement stands."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            target = _resolve(name) if name.startswith("labcheck") else None
            if target and target != module:
                found.add(target)
    return found


GRAPH = {name: imports_of(path, name) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                members.append(top)
                if top == node:
                    break
            if len(members) > 1:
                out.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def _is_package_parent(a: str, b: str) -> bool:
    """A package's __init__ re-exporting its own modules is not a circle of rooms."""
    return b.startswith(a + ".") or a.startswith(b + ".")


def test_no_import_circles() -> None:
    graph = {m: {t for t in ts if not _is_package_parent(m, t)} for m, ts in GRAPH.items()}
    assert _cycles(graph) == []


def test_nothing_imports_the_plugin() -> None:
    assert sorted(m for m, targets in GRAPH.items() if "labcheck.plugin" in targets) == []


def test_probes_are_transports_below_the_components() -> None:
    upward = {m: sorted(t for t in ts if t.startswith(("labcheck.components", "labcheck.plugin",
                                                        "labcheck.session", "labcheck.outcomes")))
              for m, ts in GRAPH.items() if m.startswith("labcheck.probes")}
    assert {m: ts for m, ts in upward.items() if ts} == {}


def test_the_sandbox_is_a_wing() -> None:
    allowed = ("labcheck.sandbox", "labcheck.evidence", "labcheck.errors")
    reach = {m: sorted(t for t in ts if not t.startswith(allowed))
             for m, ts in GRAPH.items() if m.startswith("labcheck.sandbox")}
    assert {m: ts for m, ts in reach.items() if ts} == {}


def test_checks_ask_components_only() -> None:
    for path in sorted((REPO / "checks").glob("*.py")):
        targets = imports_of(path, f"checks.{path.stem}")
        wrong = sorted(t for t in targets if not t.startswith(("labcheck.components", "labcheck.errors")))
        assert wrong == [], f"{path.name} imports {wrong}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name: str) -> None:
    limit = MAX_LINES_SANDBOX if name.startswith("labcheck.sandbox") else MAX_LINES
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= limit, f"{MODULES[name].relative_to(REPO)}: {lines} lines, more than {limit}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
