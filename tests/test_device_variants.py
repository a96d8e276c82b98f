"""No test runs on a GPU alone: a gpu mark may only sit on a ``pytest.param`` beside a ``cpu`` one in the same
parametrisation (``tests/devices.py``), so CI, which has no GPU, runs the code of every GPU test on CPU."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TypeGuard

from tests.devices import DEVICES

TESTS = Path(__file__).parent


def _is_gpu_mark(node: ast.AST) -> TypeGuard[ast.Attribute]:
    """``pytest.mark.gpu`` (or ``mark.gpu``)."""
    owner = node.value if isinstance(node, ast.Attribute) and node.attr == "gpu" else None
    return (isinstance(owner, ast.Attribute) and owner.attr == "mark") or (
        isinstance(owner, ast.Name) and owner.id == "mark")


def _is_param(node: ast.AST) -> bool:
    """A ``pytest.param(...)`` (or ``param(...)``) call."""
    return isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Attribute) and node.func.attr == "param")
        or (isinstance(node.func, ast.Name) and node.func.id == "param"))


def _is_cpu(node: ast.AST) -> bool:
    value = node.args[0] if isinstance(node, ast.Call) and _is_param(node) and node.args else node
    return isinstance(value, ast.Constant) and value.value == "cpu"


def gpu_only(source: str) -> list[int]:
    """Lines of ``source`` with a gpu mark that is not the marks of a ``pytest.param`` in a list or tuple holding a
    ``cpu`` value too: on a test, a module or a lone parameter, it makes tests that no CPU machine runs."""
    tree = ast.parse(source)
    beside_cpu: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)) and any(_is_cpu(e) for e in node.elts):
            for element in node.elts:
                if isinstance(element, ast.Call) and _is_param(element):
                    beside_cpu.update(id(mark) for keyword in element.keywords if keyword.arg == "marks"
                                      for mark in ast.walk(keyword.value) if _is_gpu_mark(mark))
    return sorted(node.lineno for node in ast.walk(tree) if _is_gpu_mark(node) and id(node) not in beside_cpu)


def test_every_gpu_test_runs_on_cpu_too() -> None:
    found = [f"{path.relative_to(TESTS.parent)}:{line}" for path in sorted(TESTS.rglob("*.py"))
             for line in gpu_only(path.read_text(encoding="utf-8"))]
    assert found == [], "gpu-only tests (parametrise them over tests.devices.DEVICES): " + ", ".join(found)


def test_devices_are_the_cpu_and_a_gpu_marked_cuda() -> None:
    assert [(p.values, [m.name for m in p.marks]) for p in DEVICES] == [(("cpu",), []), (("cuda",), ["gpu"])]


def test_gpu_only_tests_are_found() -> None:
    source = '''
import pytest
from pytest import mark, param

pytestmark = [pytest.mark.gpu]

@pytest.mark.gpu
def test_decorated(): ...

@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.gpu)])
def test_cuda_alone(device): ...

@pytest.mark.parametrize("device", ["cpu", param("cuda", marks=[mark.gpu, mark.slow])])
def test_both(device): ...

DEVICES = (pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu))
'''
    assert gpu_only(source) == [5, 7, 10]
