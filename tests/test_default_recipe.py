"""The default recipe end to end through the CLI, shortened: every stage trains, every suite runs before
training and after each stage, and the report is written with its plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.runs import train
from toolkit.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_passkey_writes_the_whole_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "tiny"
    assert train(ROOT / "recipes" / "tiny-passkey.yaml", "train.max_steps=2", f"output.dir={run}",
                 "model.train_tokenizer.corpus_documents=200") == 0
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
    assert "yarn" in report and "passkey-256" in report
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert list(run.glob("*.png"))
    assert "Verdict (niah-tiny/passkey): FAIL" in report


@pytest.mark.slow
def test_check_fails_when_the_claim_does_not_hold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What CI runs after `make train` (`make check`), on the default recipe deliberately broken: two steps
    per stage cannot learn retrieval, so the verdict fails and the check exits 1, naming the failed checks."""
    run = tmp_path / "broken"
    assert train(ROOT / "recipes" / "tiny-passkey.yaml", "train.max_steps=2", f"output.dir={run}",
                 "model.train_tokenizer.corpus_documents=200") == 0
    capsys.readouterr()
    assert main(["report", str(run), "--check"]) == 1
    out = capsys.readouterr()
    assert "accuracy at 256 before extension" in out.err + out.out
