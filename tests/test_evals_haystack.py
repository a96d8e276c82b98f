"""Haystack datasets: a failure to read one stops the evaluation unless the task accepts the built-in filler,
and then the results, the headline and the report say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.errors import UserError
from toolkit.evals import haystack
from toolkit.evals.niah import NiahTask, grid_summary
from toolkit.evals.registry import headline
from toolkit.evals.results import SuiteResults, task_identity
from toolkit.evals.specs import HaystackSpec
from toolkit.report.report import build_report


@pytest.fixture
def unreachable(monkeypatch: pytest.MonkeyPatch):
    def fail(spec: HaystackSpec) -> str:
        raise ConnectionError(f"cannot reach the hub for {spec.path}\n(offline)")

    monkeypatch.setattr(haystack, "_dataset_text", fail)
    haystack._load.cache_clear()
    yield
    haystack._load.cache_clear()


def test_unreadable_dataset_is_a_user_error_naming_it(unreachable) -> None:
    with pytest.raises(UserError) as info:
        haystack.load_sentences(HaystackSpec(source="dataset", path="org/gone"))
    message = str(info.value)
    assert "org/gone" in message and "ConnectionError" in message and "fallback: true" in message
    assert "\n" not in message


def test_fallback_is_recorded_and_reported(unreachable, tmp_path: Path) -> None:
    spec = HaystackSpec(source="dataset", path="org/gone", fallback=True)
    assert haystack.load_sentences(spec) is None
    assert "org/gone" in (haystack.fallback_reason(spec) or "")
    task = NiahTask(type="niah", name="grid", lengths=[64], haystack=spec)
    run = tmp_path / "run"
    results = SuiteResults(run / "eval" / "base" / "s.json", "s", "base", "m", "fp")
    cells = [{"length": 64, "depth": depth, "sample": 0, "correct": True} for depth in task.depths]
    entry = results.record(task, cells, grid_summary(cells, task))
    assert entry["haystack_fallback"].startswith("haystack: haystack dataset org/gone")
    assert entry["identity"]["haystack_fallback"] is True
    assert "HAYSTACK FALLBACK" in headline(entry)
    saved = json.loads((run / "eval" / "base" / "s.json").read_text())
    assert saved["tasks"]["grid"]["haystack_fallback"] == entry["haystack_fallback"]
    build_report(run)
    assert "Warning: the built-in filler stood in for a haystack dataset in s/grid at base" in (
        run / "report.md").read_text()


def test_cells_of_a_fallback_are_not_reused_once_the_dataset_reads(unreachable, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spec = HaystackSpec(source="dataset", path="org/flaky", fallback=True)
    task = NiahTask(type="niah", lengths=[64], haystack=spec)
    path = tmp_path / "s.json"
    SuiteResults(path, "s", "t", "m", "fp").record(task, [{"length": 64, "depth": 0.0, "sample": 0}])
    assert SuiteResults(path, "s", "t", "m", "fp").cells(task)
    monkeypatch.setattr(haystack, "_dataset_text", lambda spec: "A real sentence. Another one.")
    haystack._load.cache_clear()
    assert "haystack_fallback" not in task_identity(task)
    assert SuiteResults(path, "s", "t", "m", "fp").cells(task) == []
