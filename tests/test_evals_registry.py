"""The task-type registry: every type complete, what it registers checked, the cache identity carries the type's
version, and the README's example of a new type works end to end (runner, headline, report section, card)."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path
from typing import Literal

import pytest

from tests.test_evals_fixtures import tiny_model, tiny_tokenizer
from toolkit.errors import UserError
from toolkit.evals.context import EvalContext
from toolkit.evals.niah import NiahTask
from toolkit.evals.registry import BUILT_IN, TASK_TYPES, card_metrics, headline, register, task_type
from toolkit.evals.results import SuiteResults, task_identity
from toolkit.evals.specs import TaskBase
from toolkit.evals.task_type import TaskType
from toolkit.evals.transformers_backend import TransformersBackend
from toolkit.recipe.strict import Strict
from toolkit.report import report
from toolkit.run_folder import load_run

README = Path(__file__).resolve().parents[1] / "evals" / "README.md"


@pytest.mark.parametrize("name", list(TASK_TYPES))
def test_every_type_is_complete(name: str) -> None:
    kind = task_type(name)
    assert kind.name == name and kind.spec.version >= 1 and kind in BUILT_IN
    assert callable(kind.section) and callable(kind.card_metrics) and callable(kind.headline)
    assert callable(kind.runner)


def test_twice_registered_type_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register(TASK_TYPES["niah"])


class _NotATask(Strict):
    type: Literal["not_a_task"]


class _Unnamed(TaskBase):
    type: str


@pytest.mark.parametrize(("kind", "message"), [
    (TaskType(_NotATask, TASK_TYPES["niah"].runner), "must be a TaskBase subclass"),  # type: ignore[arg-type]
    (TaskType(_Unnamed, TASK_TYPES["niah"].runner), r"type must be Literal\["),
    ("toolkit.evals.niah:TASK_TYPE", "not a TaskType"),
])
def test_what_is_registered_is_checked(kind: TaskType, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        register(kind)
    assert list(TASK_TYPES) == [built_in.name for built_in in BUILT_IN]


def test_version_is_part_of_the_cache_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = NiahTask(type="niah", lengths=[64])
    assert task_identity(task)["version"] == NiahTask.version
    path = tmp_path / "s.json"
    SuiteResults(path, "s", "t", "m", "fp").record(task, [{"length": 64, "depth": 0.0, "sample": 0}])
    assert SuiteResults(path, "s", "t", "m", "fp").cells(task)
    monkeypatch.setattr(NiahTask, "version", 99)
    assert SuiteResults(path, "s", "t", "m", "fp").cells(task) == []  # prompts changed: nothing reused


def _readme_example() -> types.ModuleType:
    example = re.search(r"```python\n(.*?)```", README.read_text().split("## Adding a task type")[1], re.DOTALL)
    assert example is not None
    code = example.group(1)
    module = types.ModuleType("copy_task")
    exec(compile(code, str(README), "exec", dont_inherit=True), module.__dict__)  # noqa: S102  (our own README)
    return module


def test_readme_example_of_a_new_type(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    module = _readme_example()
    request.addfinalizer(lambda: TASK_TYPES.pop("copy", None))
    register(module.TASK_TYPE)  # what listing it in BUILT_IN does
    task = module.CopyTask(type="copy", samples=3)
    run = tmp_path / "run"
    for tag in ("base", "stage-0-long"):
        folder = run / "eval" / tag
        results = SuiteResults(folder / "toy.json", "toy", tag, "tiny", "fp")
        ctx = EvalContext(TransformersBackend(tiny_model(), tiny_tokenizer()), folder, "toy", "tiny")
        entry = task_type("copy").run(task, ctx, results)
        results.finish({task.key})
    assert entry["type"] == "copy" and entry["n"] == 3 and entry["identity"]["version"] == 1
    assert headline(entry).startswith("score ")
    assert card_metrics("copy", entry) == {"copy": [("copy", "copy score", round(entry["score"], 4))]}
    assert report._sections()[-1] is module.copy_section
    report.build_report(run)
    md = (run / "report.md").read_text()
    assert "## Copy" in md and "| toy / copy | base |" in md and "| toy / copy |" in md.split("## Evaluation")[1]
    assert load_run(run).tasks("copy") == [("toy", "copy")]
    edited = run / "eval" / "base" / "toy.json"  # its entry's shape is checked: a hand-edited one is named
    data = json.loads(edited.read_text())
    del data["tasks"]["copy"]["n"]
    edited.write_text(json.dumps(data))
    with pytest.raises(UserError, match=re.escape(f"{edited}: tasks.copy.n: Field required")):
        report.build_report(run)
