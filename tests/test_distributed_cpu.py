"""Two CPU processes (DDP over gloo, configs/cpu-ddp-2proc.yaml) train like one process with the same global batch,
a two-process run stopped by a fault one process met (a stop signal, a bad record) resumes to the
uninterrupted one, and a stop signal met by the main process while it evaluates stops both.

Every process reads the same row stream and accelerate gives each its share of every global batch, so two processes
with batch size B train on the rows one process with 2B does, micro-batch for micro-batch, with the same token-weighted
loss under gradient accumulation (the micro recipe's second stage accumulates 2 micro-batches). The curves differ only
by floating-point summation order (gradients averaged over processes instead of summed in one batch): within 1e-4
relative (measured: under 1e-5).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.runs import HALF_BATCH, ROOT, accelerate_launch, assert_same_weights, final_weights, metrics, needle_suite

ONE_PROCESS_FAULT = '''
import os
import signal
import sys
from contextlib import contextmanager

import toolkit.runner
from tests.runs import StopAfter
from toolkit.cli import main
from toolkit.data.batches import StageBatches
from toolkit.errors import UserError
from toolkit.evals.transformers_backend import TransformersBackend
from toolkit.training.faults import StopFlag

fault, n = sys.argv[1], int(sys.argv[2])
faulty = os.environ.get("RANK") == ("0" if fault == "eval-sigint" else "1")
draws = StageBatches.__next__
drawn = [0]
matches = TransformersBackend.greedy_matches
matched = [0]


@contextmanager
def stop_after():
    yield StopAfter(n) if faulty and fault == "stop" else StopFlag()


def draw(self):
    drawn[0] += 1
    if faulty and fault == "bad-record" and drawn[0] == n:
        raise UserError("train.data.path: cannot read data.jsonl: line 7: not JSON")
    return draws(self)


def greedy_matches(self, requests):
    matched[0] += 1
    if faulty and fault == "eval-sigint" and matched[0] == n:
        signal.raise_signal(signal.SIGINT)
    return matches(self, requests)


if fault == "stop":
    toolkit.runner.stop_on_signals = stop_after
StageBatches.__next__ = draw
TransformersBackend.greedy_matches = greedy_matches
sys.exit(main(sys.argv[3:]))
'''
"""A training entry point where one process alone meets a fault: the second one ``stop N`` (a SIGTERM reaching it
after N optimizer steps, before the other process) or ``bad-record N`` (a mistake in the data at its Nth draw), the
main one ``eval-sigint N`` (a SIGINT at the Nth batch of needles it evaluates)."""


def _two_processes(recipe: Path, run: Path, *overrides: str, fault: tuple[str, int] | None = None,
                   ) -> subprocess.CompletedProcess:
    entry = ["-m", "toolkit"]
    if fault is not None:
        script = run.parent / "faulty_train.py"
        script.write_text(ONE_PROCESS_FAULT)
        entry = [str(script), fault[0], str(fault[1])]
    return accelerate_launch(ROOT / "configs/cpu-ddp-2proc.yaml", *entry, "train", str(recipe), f"output.dir={run}",
                             *HALF_BATCH, *overrides)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro recipe on two processes in one go, saving every 2 steps."""
    from tests.conftest import MICRO_RECIPE, write_recipe

    folder = tmp_path_factory.mktemp("two-process")
    recipe = write_recipe(folder, dict(MICRO_RECIPE))
    result = _two_processes(recipe, folder / "run", "train.save_every=2")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run"


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(uninterrupted: Path, two_process_run: Path) -> None:
    one, two = metrics(uninterrupted), metrics(two_process_run)
    assert [r["global_step"] for r in two] == [r["global_step"] for r in one]  # logged once, not per process
    info = json.loads((two_process_run / "run_info.json").read_text())
    assert (info["processes"], info["data_parallel"], info["engine"]) == (2, 2, "ddp")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    assert [r["source_tokens"] for r in two] == [r["source_tokens"] for r in one]  # the same rows were drawn
    assert _mean([r["loss"] for r in two if r["stage"] == 0][-2:]) < 0.9 * _mean([r["loss"] for r in two][:2])


@pytest.mark.slow
def test_two_process_resume_reproduces_uninterrupted_run(tmp_path: Path, two_process_run: Path) -> None:
    """A stop signal seen by one process stops both after the same step, with one checkpoint."""
    from tests.conftest import MICRO_RECIPE, write_recipe

    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE))
    run = tmp_path / "run"
    stopped = _two_processes(recipe, run, "train.save_every=2", fault=("stop", 7))  # in stage 1, between checkpoints
    assert stopped.returncode != 0 and "checkpoint saved" in stopped.stderr, stopped.stderr[-3000:]
    assert not (run / "final").exists()
    _assert_resumes_to(recipe, run, two_process_run)


@pytest.mark.slow
def test_a_bad_record_met_by_one_process_saves_the_steps_of_both(tmp_path: Path, two_process_run: Path) -> None:
    from tests.conftest import MICRO_RECIPE, write_recipe

    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE))
    run = tmp_path / "run"
    stopped = _two_processes(recipe, run, "train.save_every=2", fault=("bad-record", 6))  # stage 0's last step
    assert stopped.returncode != 0, stopped.stderr[-3000:]
    kept = run / "checkpoints" / "stage-0-step-000005"
    assert (f"error: train.data.path: cannot read data.jsonl: line 7: not JSON; the steps trained so far are in "
            f"{kept}: mend the data") in stopped.stderr, stopped.stderr[-3000:]
    assert f"error: train.data: another process met a mistake in the data; the steps trained so far are in {kept}" \
        in stopped.stderr
    _assert_resumes_to(recipe, run, two_process_run)


@pytest.mark.slow
def test_a_stop_signal_met_by_the_main_process_while_it_evaluates_stops_both(tmp_path: Path) -> None:
    """The main process evaluates while the other waits: a SIGINT there ends the evaluation at its batch, and both
    stop with the checkpoint of the stage evaluated (the waiting one is not left until the timeout); resumed, the run
    finishes the evaluation."""
    from tests.conftest import MICRO_RECIPE, write_recipe

    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, eval={"suites": [str(needle_suite(tmp_path))], "before": False}))
    run, short = tmp_path / "run", ("stages[0].max_steps=2", "stages[1].max_steps=2")
    stopped = _two_processes(recipe, run, *short, fault=("eval-sigint", 2))  # the needles' second length
    said = (f"stopped by SIGINT during evaluation stage-0-short; checkpoint saved at "
            f"{run / 'checkpoints' / 'stage-0-step-000002'}; continue with train.resume=true")
    assert stopped.returncode != 0 and stopped.stderr.count(said) == 2, stopped.stderr[-3000:]
    results = run / "eval" / "stage-0-short" / "needles.json"
    assert json.loads(results.read_text())["tasks"]["passkey"]["complete"] is False
    assert [row["global_step"] for row in metrics(run)] == [1, 2]

    resumed = _two_processes(recipe, run, *short, "train.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    tasks = json.loads(results.read_text())["tasks"]
    assert sorted(tasks) == ["loss", "passkey"] and all(entry["complete"] for entry in tasks.values())
    assert [row["global_step"] for row in metrics(run)] == [1, 2, 3, 4] and (run / "final").is_dir()


def _assert_resumes_to(recipe: Path, run: Path, reference: Path) -> None:
    resumed = _two_processes(recipe, run, "train.save_every=2", "train.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ours, expected = metrics(run), metrics(reference)
    assert [r["global_step"] for r in ours] == [r["global_step"] for r in expected]
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in expected], abs=1e-6)
    assert_same_weights(final_weights(run), final_weights(reference))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
