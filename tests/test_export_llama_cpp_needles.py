"""``export --check``: the run's needle grids asked again in llama.cpp on the exported file, with the same prompts
and scoring as transformers, and written beside them into the run's final evaluation and report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.real_model import needs_converter, needs_llama_cpp
from tests.test_export_gguf import micro_run
from toolkit.cli import main
from toolkit.run_folder import load_run

pytestmark = [needs_converter, needs_llama_cpp]

DEFAULT_RUN = Path(__file__).resolve().parents[1] / "runs" / "tiny-passkey"


def _by_length(run: Path, suite: str, task: str) -> dict[str, float]:
    final = load_run(run).final
    assert final is not None
    return json.loads((run / "eval" / final / f"{suite}.json").read_text())["tasks"][task]["scores_by_length"]


def test_export_check_adds_llama_cpp_grids_to_the_final_evaluation(tmp_path: Path) -> None:
    suite = tmp_path / "needles.yaml"
    suite.write_text("name: needles\ntasks:\n  - {type: niah, name: passkey, lengths: [64, 128], "
                     "depths: [0.0, 1.0], samples: 2}\n")
    run = micro_run(tmp_path, f"eval.suites=[{suite}]", "eval.before=false")
    assert main(["export", str(run), "--format", "gguf", "--check"]) == 0
    ours = json.loads((run / "eval" / "stage-1-long" / "needles@llama.cpp-f16.json").read_text())
    entry = ours["tasks"]["passkey"]
    assert entry["n_by_length"] == {"64": 4, "128": 4}
    assert ours["fingerprint"].startswith("gguf:")
    assert "needles@llama.cpp-f16 / passkey" in (run / "report.md").read_text()


@pytest.mark.skipif(not (DEFAULT_RUN / "final" / "model.safetensors").is_file(),
                    reason="no final model of the default recipe in runs/tiny-passkey: run `make train`")
def test_the_default_runs_needle_scores_are_the_same_in_llama_cpp(tmp_path: Path) -> None:
    """The default run's grids (passkey at 128-2048 tokens, 100 prompts per length) score the same in llama.cpp
    (f16) as in transformers, within one prompt in a hundred per length."""
    run = tmp_path / "tiny-passkey"
    shutil.copytree(DEFAULT_RUN, run, ignore=shutil.ignore_patterns("checkpoints"))
    assert main(["export", str(run), "--format", "gguf", "--check"]) == 0
    theirs, ours = _by_length(run, "niah-tiny", "passkey"), _by_length(run, "niah-tiny@llama.cpp-f16", "passkey")
    assert ours.keys() == theirs.keys()
    assert all(abs(ours[length] - theirs[length]) <= 0.01 for length in theirs), (ours, theirs)
