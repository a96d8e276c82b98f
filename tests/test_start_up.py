"""The commands a login node runs before and after a job (the CLI's ``TORCH_FREE``: ``validate``, ``report``) import
neither torch nor transformers, so they answer in a second or two, not seven: each runs in a fresh process that then
lists the heavy libraries it imported."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.real_model import loadable
from tests.test_recipes_validate import NOT_SHIPPED, RECIPES
from tests.test_verdict import SPEC, fake_run
from toolkit.cli import TORCH_FREE

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import sys; from toolkit.cli import main; code = main(sys.argv[1:]); "
         "print(code, *sorted(m for m in ('torch', 'transformers', 'peft', 'sklearn') if m in sys.modules))")


def _validate(tmp_path: Path) -> list[str]:
    return ["validate", *(str(path) for path in loadable(RECIPES) if path.name not in NOT_SHIPPED)]


def _report(tmp_path: Path) -> list[str]:
    return ["report", str(fake_run(tmp_path, "run", verdict=SPEC)), "--check"]


COMMANDS: dict[str, Callable[[Path], list[str]]] = {"validate": _validate, "report": _report}
"""Each torch-free command, as a user runs it: every shipped recipe; a run's report and verdict."""


@pytest.mark.parametrize("command", TORCH_FREE)
def test_the_command_imports_no_torch(command: str, tmp_path: Path) -> None:
    assert command in COMMANDS, f"TORCH_FREE names {command}: give it a command line here"
    done = subprocess.run([sys.executable, "-c", PROBE, *COMMANDS[command](tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.stdout.splitlines()[-1:] == ["0"], done.stdout + done.stderr
