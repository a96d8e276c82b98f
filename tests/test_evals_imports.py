"""The evaluations sit below the report (docs/architecture.md): no module of ``toolkit/evals/`` imports
``toolkit.report``, ``toolkit/formatting/`` imports neither, and the evals modules import each other without a
cycle. Imports are read with ast, every one of them: at the top, inside functions and under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
from pathlib import Path

TOOLKIT = Path(__file__).resolve().parents[1] / "toolkit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(TOOLKIT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(path: Path) -> str:
    name = _module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(source: str, package: str) -> set[str]:
    """Every module ``source`` (a module of ``package``) imports; ``from p import name`` counts ``p.name`` too
    (whether a submodule or not)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    paths = sorted((TOOLKIT.parent / package.replace(".", "/")).rglob("*.py"))
    modules = {_module_name(path): path for path in paths}
    return {name: {other for other in _imports(path.read_text(encoding="utf-8"), _package(path))
                   if other in modules and other != name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as the modules along it (empty when there is none)."""
    state: dict[str, str] = {}
    trail: list[str] = []

    def visit(name: str) -> list[str]:
        state[name] = "open"
        trail.append(name)
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                return trail[trail.index(other):] + [other]
            if other not in state and (found := visit(other)):
                return found
        state[name] = "done"
        trail.pop()
        return []

    for name in sorted(graph):
        if name not in state and (found := visit(name)):
            return found
    return []


def _importers(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """``module imports name`` for every import of a ``forbidden`` module under ``toolkit/<package>/``."""
    found = []
    for path in sorted((TOOLKIT / package).rglob("*.py")):
        names = {name for name in _imports(path.read_text(encoding="utf-8"), _package(path))
                 if name.startswith(forbidden)}
        found += [f"{_module_name(path)} imports {name}" for name in sorted(names)
                  if name.rpartition(".")[0] not in names]  # ``from m import f``: m, not m.f
    return found


def test_evals_never_import_the_report() -> None:
    assert not _importers("evals", ("toolkit.report",))


def test_formatting_imports_neither_evals_nor_report() -> None:
    assert not _importers("formatting", ("toolkit.report", "toolkit.evals"))


def test_evals_modules_import_each_other_without_a_cycle() -> None:
    cycle = _cycle(_graph("toolkit.evals"))
    assert not cycle, " -> ".join(cycle)


def test_the_checks_see_cycles_and_every_kind_of_import() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert not _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}})
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from toolkit import report\n"
              "def f():\n    import toolkit.report.cells\n    from .. import formatting\n    from .plots import x\n")
    assert {"toolkit.report", "toolkit.report.cells", "toolkit.formatting", "toolkit.evals.plots"} <= _imports(
        source, "toolkit.evals")
