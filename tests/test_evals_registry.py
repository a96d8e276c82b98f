"""The task-type registry: every type complete, the cache identity carries the type's version, and the README's
example of a new type works end to end (runner, headline, report section, card)."""

from __future__ import annotations

import dataclasses
import re
import types
from pathlib import Path

import pytest

from tests.test_evals_fixtures import tiny_model, tiny_tokenizer
from toolkit.evals.context import EvalContext
from toolkit.evals.registry import TASK_TYPES, card_metrics, headline, register, task_type
from toolkit.evals.results import SuiteResults, task_identity
from toolkit.evals.suite import NiahTask
from toolkit.report import report
from toolkit.run_folder import load_run

README = Path(__file__).resolve().parents[1] / "evals" / "README.md"


@pytest.mark.parametrize("name", list(TASK_TYPES))
def test_every_type_is_complete(name: str) -> None:
    kind = task_type(name)
    assert kind.name == name and kind.version >= 1
    assert callable(kind.report_section()) and callable(kind.card_metrics) and callable(kind.headline)
    assert callable(__import__("toolkit.evals.task_type", fromlist=["resolve"]).resolve(kind.runner))


def test_twice_registered_type_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register(TASK_TYPES["niah"])


def test_version_is_part_of_the_cache_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = NiahTask(type="niah", lengths=[64])
    assert task_identity(task)["version"] == TASK_TYPES["niah"].version
    path = tmp_path / "s.json"
    SuiteResults(path, "s", "t", "m", "fp").record(task, [{"length": 64, "depth": 0.0, "sample": 0}])
    assert SuiteResults(path, "s", "t", "m", "fp").cells(task)
    monkeypatch.setitem(TASK_TYPES, "niah", dataclasses.replace(TASK_TYPES["niah"], version=99))
    assert SuiteResults(path, "s", "t", "m", "fp").cells(task) == []  # prompts changed: nothing reused


def _readme_example() -> types.ModuleType:
    example = re.search(r"```python\n(.*?)```", README.read_text().split("## Adding a task type")[1], re.DOTALL)
    assert example is not None
    code = example.group(1)
    module = types.ModuleType("copy_task")
    exec(compile(code, str(README), "exec", dont_inherit=True), module.__dict__)  # noqa: S102  (our own README)
    return module


def test_readme_example_of_a_new_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _readme_example()
    monkeypatch.setitem(TASK_TYPES, "copy", module.TASK_TYPE)
    task = module.CopyTask(type="copy", samples=3)
    run = tmp_path / "run"
    for tag in ("base", "stage-0-long"):
        folder = run / "eval" / tag
        results = SuiteResults(folder / "toy.json", "toy", tag, "tiny", "fp")
        entry = task_type("copy").run(task, EvalContext(tiny_model(), tiny_tokenizer(), folder, "toy", "tiny"),
                                      results)
        results.finish({task.key})
    assert entry["type"] == "copy" and entry["n"] == 3 and entry["identity"]["version"] == 1
    assert headline(entry).startswith("score ")
    assert card_metrics("copy", entry) == {"copy": [("copy", "copy score", round(entry["score"], 4))]}
    assert report._sections()[-1] is module.copy_section
    report.build_report(run)
    md = (run / "report.md").read_text()
    assert "## Copy" in md and "| toy / copy | base |" in md and "| toy / copy |" in md.split("## Evaluation")[1]
    assert load_run(run).tasks("copy") == [("toy", "copy")]
