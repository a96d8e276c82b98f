"""``make gpu-check DEVICE=cpu``: the GPU check's script runs end to end at tiny shapes within its minute and
writes every section, with what it measured or why it skipped it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gpu-check")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - started < 75  # a 57 s budget, plus start-up and the last row's overrun
    assert (out / "gpu-check.md").read_text().startswith("# GPU check (cpu)")
    return json.loads((out / "gpu-check.json").read_text())


def test_every_section_reports_rows_or_reasons(result: dict) -> None:
    assert result["mode"] == "cpu" and result["elapsed_s"] <= 60 and result["versions"]["transformers"] == "5.17.0"
    assert [s["name"][0] for s in result["sections"]] == ["1", "2", "3", "4"]
    for section in result["sections"]:
        assert section["rows"] or section["skipped"], section
        assert not any(note.startswith("failed:") for note in section["notes"]), section["notes"]
        assert all(s["why"] for s in section["skipped"])


def test_gpu_tests_skip_cleanly_without_a_gpu(result: dict) -> None:
    tests = result["sections"][0]
    for row in tests["rows"]:
        assert row["outcome"] == "skipped" and row["message"], row
    assert tests["rows"] or "did not finish" in tests["skipped"][0]["why"]


def test_measured_rows_hold_real_numbers(result: dict) -> None:
    stage = {row["run"]: row for row in result["sections"][1]["rows"]}
    for row in stage.values():  # up to 10 steps of the tiny recipe from random init: the loss starts near ln(512)
        assert 0 < row["steps"] <= 10 and abs(row["first_loss"] - 6.24) < 0.3
    if len(stage) == 2:  # both on the CPU here: the same curve over the steps both logged
        n = min(stage["device"]["steps"], stage["cpu"]["steps"])
        assert stage["device"]["losses"][:n] == pytest.approx(stage["cpu"]["losses"][:n], abs=1e-6)
    throughput = [row for row in result["sections"][2]["rows"] if row["status"] == "ok"]
    for row in throughput:
        assert row["seq_len"] == 256 and row["tokens_per_s"] > 0 and 0 < row["mfu"] and row["peak_gib"] > 0
    assert throughput or result["sections"][2]["skipped"]
