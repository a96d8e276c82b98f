"""``make gpu-demo DEVICE=cpu``: the GPU demo's script end to end at tiny scale, on the real model and the real
corpus, through the real CLI: the run, its evaluations before and after, the report with the verdict, the zero-shot
YaRN reference and every check with its numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.real_model import REPO, needs_corpus, needs_small_model
from toolkit.environment import source_commit
from toolkit.errors import UserError
from toolkit.evals.stats import Comparison
from toolkit.run_folder import NO_COMMIT

sys.path.insert(0, str(REPO))

from benchmarks.gpu_demo import check_recipe  # noqa: E402
from benchmarks.gpu_demo_results import RESULTS  # noqa: E402

pytestmark = [needs_small_model, needs_corpus]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's folder: ``out/`` as the demo wrote it, and ``back/`` its results file unpacked."""
    folder = tmp_path_factory.mktemp("gpu-demo")
    done = subprocess.run([sys.executable, "benchmarks/gpu_demo.py", "--device", "cpu", "--out", str(folder / "out"),
                           "--run", str(folder / "run")], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    with tarfile.open(folder / "out" / RESULTS) as archive:
        archive.extractall(folder / "back", filter="data")
    return folder


def test_what_comes_back_is_a_few_files_at_the_top(demo: Path) -> None:
    """A GPU machine gives back at most 8 files, none more than two folders down."""
    names = sorted(path.name for path in (demo / "out").rglob("*"))
    assert names == sorted(["gpu-demo.json", "gpu-demo.md", RESULTS, "report.md", "train.log", "zero-shot-yarn.log"])
    assert (demo / "out" / "report.md").read_text() == (demo / "back" / "run" / "report.md").read_text()


def _far(buckets: dict[str, float]) -> float:
    losses = [loss for first, loss in buckets.items() if int(first) >= 256]
    return sum(losses) / len(losses)


def test_every_check_is_computed_with_numbers(demo: Path) -> None:
    result = json.loads((demo / "out" / "gpu-demo.json").read_text())
    assert result["steps"] == 2 and result["device"].startswith("CPU") and 0 < result["peak_memory_gib"] < 24
    names = [check["name"] for check in result["checks"]]
    assert names == ["accuracy at 128 before extension", "accuracy at 512 after extension",
                     "accuracy at 512 before extension", "retention",
                     "held-out loss at positions >= 256 below zero-shot YaRN x4",
                     "short held-out perplexity within 5% of the base", "short chat passkey no lower than the base"]
    assert all(any(ch.isdigit() for ch in check["detail"]) for check in result["checks"])
    assert not [check for check in result["checks"] if check["detail"].startswith(("no ", "Verdict not computed"))]
    # the held-out check, recomputed from the results that came back: mean loss over the buckets from 256 on, of
    # both documents together and of each, and the ratio of perplexities with its paired interval over the two
    far, documents = {}, {}
    for name, folder in (("after", "run/eval/stage-0-yarn-32k"), ("zero-shot", "zero-shot-yarn")):
        entry = json.loads((demo / "back" / folder / "smollm2-heldout-tiny.json").read_text())["tasks"]["heldout"]
        far[name] = _far(entry["loss_by_bucket"])
        documents[name] = [_far(doc) for doc in entry["document_loss_by_bucket"]]
    ratio = Comparison.loss_ratio(far["after"], far["zero-shot"], documents["after"], documents["zero-shot"])
    assert ratio.interval is not None and len(documents["after"]) == 2
    heldout = result["checks"][4]
    assert heldout["detail"] == (f"{far['after']:.3f} vs {far['zero-shot']:.3f}: perplexity {ratio.format(3)} x the "
                                 "reference's, n=2 documents")
    assert heldout["passed"] == (far["after"] < far["zero-shot"])
    short = result["checks"][5]["detail"]
    assert " x the base's (<= 1.05), n=2 documents" in short and short.count("[") == 1  # with its interval
    assert result["verdict"].startswith("Verdict (smollm2-needles-tiny/passkey): ")
    markdown = (demo / "out" / "gpu-demo.md").read_text()
    assert markdown.startswith("# GPU demo (CPU") and markdown.count("- **") == len(names)
    assert f"peak memory in training {result['peak_memory_gib']:.2f} GiB" in markdown
    assert result["commit"] == (source_commit() or NO_COMMIT) and f"; toolkit commit {result['commit']}." in markdown


def test_the_report_has_each_before_and_after_section(demo: Path) -> None:
    report = (demo / "back" / "run" / "report.md").read_text()
    for heading in ("Needle in a haystack", "Loss by position", "RULER"):
        assert heading in report, heading
    assert "Verdict (smollm2-needles-tiny/passkey)" in report
    for tag in ("base", "stage-0-yarn-32k"):
        for suite in ("smollm2-needles-tiny", "smollm2-heldout-tiny", "smollm2-short-tiny"):
            assert (demo / "back" / "run" / "eval" / tag / f"{suite}.json").is_file(), (tag, suite)
    assert list((demo / "back" / "run").glob("*.png"))
    assert not (demo / "back" / "run" / "final").exists()  # no weights


def test_the_reference_is_the_base_under_zero_shot_yarn(demo: Path) -> None:
    config = json.loads((demo / "run-models" / "zero-shot-yarn" / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "yarn" and config["rope_parameters"]["factor"] == 4.0
    assert config["max_position_embeddings"] == 512
    heldout = json.loads((demo / "back" / "zero-shot-yarn" / "smollm2-heldout-tiny.json").read_text())
    losses = heldout["tasks"]["heldout"]["loss_by_bucket"]
    assert sorted(map(int, losses)) == [0, 128, 256, 384]
    assert all(math.isfinite(value) and 0 < value < 20 for value in losses.values())


def test_a_bad_recipe_setting_stops_before_training() -> None:
    with pytest.raises(UserError, match="no-such-suite.yaml") as stop:
        check_recipe(["eval.suites=[evals/no-such-suite.yaml]"])
    assert "\n" not in str(stop.value) and stop.value.exit_code == 2
