"""The default recipe end to end through the CLI, shortened: every stage trains, every suite runs after each stage
past the curriculum (the random init is not evaluated), and the report is written with its plots."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from tests.runs import metrics, train
from toolkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 2
"""Prompts per cell of the needle grids (the shipped niah-tiny asks 20 and 10): two steps per stage retrieve
nothing, so a few prompts per cell tell the same, and the evaluations after each stage take seconds, not half a
minute."""
pytestmark = pytest.mark.slow


def _fewer_samples(folder: Path) -> Path:
    """evals/niah-tiny.yaml as shipped (its name, tasks, lengths, depths and RoPE settings), each task asking at most
    :data:`SAMPLES` prompts per cell."""
    suite = yaml.safe_load((ROOT / "evals" / "niah-tiny.yaml").read_text())
    for task in suite["tasks"]:
        task["samples"] = min(task["samples"], SAMPLES)
    path = folder / "niah-tiny.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default recipe with two steps per stage and fewer needle prompts: every stage, suite and report, and too
    little training for retrieval."""
    folder = tmp_path_factory.mktemp("tiny")
    shipped = yaml.safe_load((ROOT / "recipes" / "tiny-passkey.yaml").read_text())["eval"]["suites"]
    named = [_fewer_samples(folder) if Path(s).name == "niah-tiny.yaml" else ROOT / "recipes" / s for s in shipped]
    suites = f"eval.suites=[{', '.join(map(str, named))}]"
    assert train(ROOT / "recipes" / "tiny-passkey.yaml", "train.max_steps=2", f"output.dir={folder / 'run'}",
                 "model.train_tokenizer.corpus_documents=200", suites) == 0
    return folder / "run"


def test_tiny_passkey_writes_the_whole_run_folder(run: Path) -> None:
    steps = [row for row in metrics(run) if "loss" in row]
    assert [max(row["step"] for row in steps if row["stage"] == stage) for stage in range(3)] == [2, 2, 2]
    assert all(math.isfinite(row["loss"]) for row in steps)
    assert not (run / "eval" / "stage-0-copy-64").exists(), "the curriculum stage is not evaluated"
    assert not (run / "eval" / "base").exists(), "a random init is not evaluated (eval.before: false)"
    tags = ["stage-1-passkey-256", "stage-2-yarn-1024"]
    for tag in tags:
        for suite in ("niah-tiny", "short-context"):
            result = json.loads((run / "eval" / tag / f"{suite}.json").read_text())
            assert result["tag"] == tag and result["tasks"], (tag, suite)
    config = json.loads((run / "final" / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "yarn" and config["max_position_embeddings"] == 1024
    report = (run / "report.md").read_text()
    assert "| passkey-256 | 256 |" in report and "| yarn-1024 | 1024 | type=yarn, factor=" in report, report
    assert report.count("| 2 (train.max_steps; the stage's ") == 3, report
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert list(run.glob("*.png"))
    assert "Verdict (niah-tiny/passkey): FAIL" in report


def test_check_fails_when_the_claim_does_not_hold(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What CI runs after `make train` (`make check`), on the default recipe deliberately broken: two steps
    per stage cannot learn retrieval, so the verdict fails and the check exits 1, naming the failed checks."""
    assert main(["report", str(run), "--check"]) == 1
    failed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1, failed
    assert re.match(r"failed: verdict failed: accuracy at 256 before extension \(\d\.\d\d vs 0\.\d\d\)", failed[0])
