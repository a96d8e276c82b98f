"""Two CPU processes (DDP over gloo, configs/cpu-ddp-2proc.yaml) train like one process with the same global batch,
and a stopped two-process run resumes to the uninterrupted one.

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

from tests.runs import HALF_BATCH, ROOT, accelerate_launch, assert_same_weights, final_weights, metrics, train

STOPPING = '''
import sys
from contextlib import contextmanager

import toolkit.runner
from tests.runs import StopAfter
from toolkit.cli import main


@contextmanager
def stop_after():
    yield StopAfter(int(sys.argv[1]))


toolkit.runner.stop_on_signals = stop_after
sys.exit(main(sys.argv[2:]))
'''
"""A training entry point that stops after ``argv[1]`` optimizer steps, as a SIGTERM to every process would."""


def _two_processes(recipe: Path, run: Path, *overrides: str, stop_after: int | None = None,
                   ) -> subprocess.CompletedProcess:
    entry = ["-m", "toolkit"]
    if stop_after is not None:
        script = run.parent / "stopping_train.py"
        script.write_text(STOPPING)
        entry = [str(script), str(stop_after)]
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
def test_two_process_ddp_matches_one_process(micro_recipe: Path, two_process_run: Path) -> None:
    single = micro_recipe.parent / "run"
    assert train(micro_recipe, "train.save_every=2") == 0
    one, two = metrics(single), metrics(two_process_run)
    assert [r["global_step"] for r in two] == [r["global_step"] for r in one]  # logged once, not per process
    info = json.loads((two_process_run / "run_info.json").read_text())
    assert (info["processes"], info["data_parallel"], info["engine"]) == (2, 2, "ddp")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    assert [r["source_tokens"] for r in two] == [r["source_tokens"] for r in one]  # the same rows were drawn
    assert _mean([r["loss"] for r in two if r["stage"] == 0][-2:]) < 0.9 * _mean([r["loss"] for r in two][:2])


@pytest.mark.slow
def test_two_process_resume_reproduces_uninterrupted_run(tmp_path: Path, two_process_run: Path) -> None:
    from tests.conftest import MICRO_RECIPE, write_recipe

    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE))
    run = tmp_path / "run"
    stopped = _two_processes(recipe, run, "train.save_every=2", stop_after=7)  # inside stage 1, between checkpoints
    assert stopped.returncode != 0 and "checkpoint saved" in stopped.stderr, stopped.stderr[-3000:]
    assert not (run / "final").exists()
    resumed = _two_processes(recipe, run, "train.save_every=2", "train.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ours, reference = metrics(run), metrics(two_process_run)
    assert [r["global_step"] for r in ours] == [r["global_step"] for r in reference]
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in reference], abs=1e-6)
    assert_same_weights(final_weights(run), final_weights(two_process_run))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
