"""The GPU demo stopped by its time limit (``timeout`` sends SIGTERM): what finished comes back, with how far it got,
to size a shorter rerun."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import pytest

from tests.real_model import REPO
from toolkit.errors import UserError

sys.path.insert(0, str(REPO))

from benchmarks import gpu_demo, gpu_demo_results  # noqa: E402


def _half_run(run_dir: Path) -> None:
    """A run folder as a stopped training leaves it: the base model's evaluation, two logged steps, a checkpoint."""
    (run_dir / "eval" / "base").mkdir(parents=True)
    (run_dir / "eval" / "base" / "smollm2-short.json").write_text('{"tasks": {}}')
    records = [{"step": 5, "global_step": 5, "loss": 2.5, "elapsed_s": 20.0, "tokens_per_s": 21000.0,
                "peak_memory_gib": 31.5},
               {"step": 10, "global_step": 10, "loss": 2.4, "elapsed_s": 41.0, "tokens_per_s": 20500.0,
                "peak_memory_gib": 31.6}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "checkpoints" / "step-5").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-5" / "adapter.safetensors").write_bytes(b"weights")


def test_a_stopped_demo_brings_back_what_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "out"
    _half_run(run_dir)

    def stopped(profile, out, run_dir, parts, extra, phases):
        phases["join"] = 2.0
        raise SystemExit(gpu_demo.STOPPED)

    monkeypatch.setattr(gpu_demo, "_steps", stopped)
    with pytest.raises(SystemExit) as stop:
        gpu_demo.demo("cpu", out, run_dir, None)
    assert stop.value.code == gpu_demo.STOPPED == 143
    text = (out / "gpu-demo.md").read_text()
    assert text.startswith("# GPU demo stopped by its time limit after ")
    assert "Phases finished: join 2 s." in text and "Evaluations finished: base." in text
    assert "Last training step logged: 10 at 41 s of training, 20500 tokens/s, peak memory 31.60 GiB." in text
    with tarfile.open(out / gpu_demo_results.RESULTS) as archive:
        assert sorted(archive.getnames()) == ["run/eval/base/smollm2-short.json", "run/metrics.jsonl"]


def test_a_demo_stopped_before_its_run_says_so(tmp_path: Path) -> None:
    text = gpu_demo_results.stopped_early(tmp_path / "no-run", tmp_path / "out", {}, 3.0)
    assert text == "# GPU demo stopped by its time limit after 3 s\n\nPhases finished: nothing.\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu-demo.md"]


def test_other_exits_are_passed_on_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object) -> None:
        raise SystemExit(2)

    monkeypatch.setattr(gpu_demo, "_steps", refused)
    with pytest.raises(SystemExit) as stop:
        gpu_demo.demo("cpu", tmp_path / "out", tmp_path / "run", None)
    assert stop.value.code == 2 and not (tmp_path / "out").exists()


def test_a_missing_package_the_checks_need_stops_the_demo_before_any_work(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_demo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="^scipy is not installed: the checks at the end need it") as stop:
        gpu_demo.demo("cpu", tmp_path / "out", tmp_path / "run", tmp_path / "parts")  # no parts joined yet
    assert stop.value.exit_code == 2 and not (tmp_path / "out").exists()
