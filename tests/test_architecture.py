"""The package's shape (docs/architecture.md): every part in a package that names it, and functions short enough to
read at once."""

from __future__ import annotations

import ast
from pathlib import Path

TOOLKIT = Path(__file__).resolve().parents[1] / "toolkit"
MAX_FUNCTION_LINES = 60
MAX_LOOSE_MODULES = 10


def _lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    return (node.end_lineno or node.lineno) - node.lineno + 1


def test_no_function_is_longer_than_60_lines() -> None:
    long = [f"{path.relative_to(TOOLKIT.parent)}:{node.lineno} {node.name} ({_lines(node)})"
            for path in sorted(TOOLKIT.rglob("*.py")) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _lines(node) > MAX_FUNCTION_LINES]
    assert not long, long


def test_few_loose_modules_at_the_top_of_the_package() -> None:
    loose = sorted(path.name for path in TOOLKIT.glob("*.py"))
    assert len(loose) <= MAX_LOOSE_MODULES, loose


def test_every_command_line_parser_reports_mistakes_in_one_line() -> None:
    """Commands under toolkit/ and benchmarks/ parse with ``OneLineParser`` (argparse's own prints its usage over
    several lines first)."""
    plain = [str(path.relative_to(TOOLKIT.parent)) for folder in (TOOLKIT, TOOLKIT.parent / "benchmarks")
             for path in sorted(folder.rglob("*.py")) if "argparse.ArgumentParser(" in path.read_text()]
    assert not plain, plain
