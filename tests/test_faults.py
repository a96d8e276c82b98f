"""Faults injected into a micro run: each ends with a message, keeps the last good checkpoint, and the
run resumes to the same result as an uninterrupted one."""

from __future__ import annotations

import errno
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import toolkit.training.checkpoints as checkpoints_module
import toolkit.training.faults as faults_module
from tests.runs import assert_same_weights, final_weights, train
from toolkit.data.batches import StageBatches
from toolkit.errors import UserError
from toolkit.recipe.schema import LoggingSpec
from toolkit.run_folder import METRICS, read_metrics
from toolkit.training.faults import SHUTDOWN_TIMEOUT_ENV, launcher_grace_s, stop_on_signals
from toolkit.training.metrics import MetricsLogger
from toolkit.training.objective import CausalLMObjective

ROOT = Path(__file__).resolve().parents[1]


def _checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def _resumed_from(run: Path, checkpoint: str, printed: str) -> None:
    """The second run resumed from ``checkpoint`` (it said so), not from scratch, and logged each of the micro
    recipe's 10 steps once."""
    assert f"resumed from {run / 'checkpoints' / checkpoint}" in printed, printed[-600:]
    assert [row["global_step"] for row in read_metrics(run)] == list(range(1, 11))


def _fail_on_call(monkeypatch, n: int, error: BaseException | None = None) -> None:
    """Make the objective's n-th call return a NaN loss (or raise ``error``)."""
    original = CausalLMObjective.forward
    calls = {"n": 0}

    def forward(self, **batch):
        calls["n"] += 1
        total, count = original(self, **batch)
        if calls["n"] == n:
            if error is not None:
                raise error
            return total * float("nan"), count
        return total, count

    monkeypatch.setattr(CausalLMObjective, "forward", forward)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(micro_recipe: Path, uninterrupted: Path,
                                                               monkeypatch, capsys) -> None:
    _fail_on_call(monkeypatch, 5)
    run = micro_recipe.parent / "run"
    assert train(micro_recipe, "train.save_every=2") == 1
    err = capsys.readouterr().err
    assert "non-finite loss in stage short at step 5" in err and "stage-0-step-000004" in err
    assert _checkpoints(run) == ["stage-0-step-000002", "stage-0-step-000004"]
    monkeypatch.undo()
    with open(run / METRICS, "a") as metrics:
        metrics.write('{"global_step": 5, "lo')  # cut off, as a kill -9 in the middle of a write leaves it
    assert train(micro_recipe, "train.save_every=2", "train.resume=true") == 0
    _resumed_from(run, "stage-0-step-000004", capsys.readouterr().out)
    assert_same_weights(final_weights(run), final_weights(uninterrupted))
    assert (run / METRICS).read_text().count("\n") == 10  # no cut-off line left inside the file


def test_a_bad_record_met_in_training_keeps_the_steps_before_it(micro_recipe: Path, uninterrupted: Path,
                                                                 monkeypatch, capsys) -> None:
    """A data mistake past the first record (which is checked up front) stops the run with exit 2 after saving the
    last step trained; with the data mended, the resumed run ends where the uninterrupted one did."""
    original = StageBatches.__next__
    calls = {"n": 0}

    def draw(self):
        calls["n"] += 1
        if calls["n"] == 6:  # stage short's 6th and last step (one micro-batch a step)
            raise UserError("train.data.path: cannot read data.jsonl: line 7: not JSON")
        return original(self)

    monkeypatch.setattr(StageBatches, "__next__", draw)
    run = micro_recipe.parent / "run"
    assert train(micro_recipe, "train.save_every=4") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: train.data.path: cannot read data.jsonl: line 7: not JSON; the steps trained so far "
                      f"are in {run / 'checkpoints' / 'stage-0-step-000005'}: mend the data, then resume with "
                      "train.resume=true"]
    assert _checkpoints(run) == ["stage-0-step-000004", "stage-0-step-000005"]
    monkeypatch.undo()
    assert train(micro_recipe, "train.resume=true") == 0
    _resumed_from(run, "stage-0-step-000005", capsys.readouterr().out)
    assert_same_weights(final_weights(run), final_weights(uninterrupted))


def test_resume_keeps_the_complete_metrics_up_to_the_checkpoint(tmp_path: Path) -> None:
    rows = [{"global_step": step, "loss": 4.0 - step} for step in (1, 2, 3)]
    (tmp_path / METRICS).write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"global_step": 4, "lo')
    logger = MetricsLogger(tmp_path, LoggingSpec(), "t")
    logger.truncate_after(3)
    assert (tmp_path / METRICS).read_text() == "".join(json.dumps(row) + "\n" for row in rows)
    logger.truncate_after(1)
    assert read_metrics(tmp_path) == rows[:1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS]  # rewritten in place: no temporary file left


def test_out_of_memory_names_what_to_change(micro_recipe: Path, monkeypatch, capsys) -> None:
    _fail_on_call(monkeypatch, 2, torch.OutOfMemoryError("CUDA out of memory"))
    assert train(micro_recipe) == 1
    failures = [line for line in capsys.readouterr().err.splitlines() if line.startswith("failed:")]
    assert len(failures) == 1
    err = failures[0]
    for advice in ("seq_len 64", "gradient_checkpointing", "activation_offload", "parallel.sequence", "toolkit plan"):
        assert advice in err


@pytest.mark.parametrize(("launched", "grace", "warnings"), [(True, "0", 1), (True, "3600", 0), (False, "0", 0)])
def test_steps_longer_than_torchruns_grace_are_warned_of_once(launched: bool, grace: str, warnings: int,
                                                             micro_recipe: Path, monkeypatch, capsys) -> None:
    """torchrun kills its processes a grace period after passing on a stop signal, and a stop is acted on at a step's
    end: a run whose step and checkpoint outlast that grace says so, once, with the setting to change."""
    if launched:
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    else:
        monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv(SHUTDOWN_TIMEOUT_ENV, grace)  # read from torch 2.12 on
    monkeypatch.setattr(faults_module, "TORCHRUN_GRACE_S", int(grace))  # the fixed wait of torch before 2.12
    assert launcher_grace_s() == (int(grace) if launched else None)
    assert train(micro_recipe, "train.save_every=2") == 0
    said = [line[line.index("a step of"):] for line in capsys.readouterr().err.splitlines() if "torchrun waits" in line]
    assert len(said) == warnings, said
    if warnings:
        assert said[0].startswith("a step of stage short takes ")
        assert "longer than the 0 s torchrun waits after passing on a stop signal before it kills" in said[0]
        # the setting it names grows with the step's time on this machine (see the test below for its value)
        assert re.search(rf"Launch with {SHUTDOWN_TIMEOUT_ENV}=[1-9][0-9]* \(torch 2.12 or later\) or set "
                         "train.save_every$", said[0]), said[0]


@pytest.mark.parametrize(("step_s", "save_s", "grace", "advised"), [(10.0, 2.0, 5, 19), (0.2, 0.1, 0, 1),
                                                                    (3.0, 2.0, 5, None)])
def test_the_advised_grace_is_half_again_a_step_and_a_checkpoint(step_s: float, save_s: float, grace: int,
                                                                  advised: int | None, caplog) -> None:
    """The setting the warning names: 1.5 x (step + checkpoint), rounded down, plus a second; none within grace."""
    flag = faults_module.StopFlag(grace_s=grace)
    with caplog.at_level("WARNING"):
        flag.warn_if_too_slow("long", step_s, save_s)
        flag.warn_if_too_slow("long", step_s, save_s)  # once only
    said = [record.getMessage() for record in caplog.records if "torchrun waits" in record.getMessage()]
    if advised is None:
        assert said == []
    else:
        assert len(said) == 1 and f"Launch with {SHUTDOWN_TIMEOUT_ENV}={advised} (torch 2.12" in said[0], said


@pytest.mark.parametrize(("version", "grace"), [("2.11.0+cu130", 30), ("2.12.0", 45), ("2.13.0+cpu", 45)])
def test_torch_before_2_12_gives_its_processes_30_seconds_whatever_the_setting(version: str, grace: int,
                                                                              monkeypatch) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv(SHUTDOWN_TIMEOUT_ENV, "45")
    monkeypatch.setattr(torch, "__version__", version)
    assert launcher_grace_s() == grace


def test_full_disk_while_saving_keeps_previous_checkpoint(micro_recipe: Path, uninterrupted: Path,
                                                          monkeypatch, capsys) -> None:
    from accelerate import Accelerator

    original = Accelerator.save_state
    calls = {"n": 0}

    def save_state(self, output_dir, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            Path(output_dir, "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    run = micro_recipe.parent / "run"
    assert train(micro_recipe, "train.save_every=2") == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "stage-0-step-000002 is intact" in err, err[-600:]
    assert _checkpoints(run) == ["stage-0-step-000002"]
    monkeypatch.undo()
    assert train(micro_recipe, "train.save_every=2", "train.resume=true") == 0
    _resumed_from(run, "stage-0-step-000002", capsys.readouterr().out)
    assert_same_weights(final_weights(run), final_weights(uninterrupted))


SLOW_STEPS = """
import time
from toolkit.training.objective import CausalLMObjective

_forward = CausalLMObjective.forward


def forward(self, **batch):
    time.sleep(0.25)
    return _forward(self, **batch)


CausalLMObjective.forward = forward
"""
"""A ``sitecustomize`` for the child: every forward pass waits 0.25 s, so the run is still training seconds after
its first checkpoint and a signal sent then always lands mid-run (the weights are those of an unslowed run)."""


def _spawn(recipe: Path, *overrides: str) -> subprocess.Popen:
    slow = recipe.parent / "slow-steps"
    slow.mkdir(exist_ok=True)
    (slow / "sitecustomize.py").write_text(SLOW_STEPS)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([str(slow), str(ROOT)]))
    return subprocess.Popen([sys.executable, "-m", "toolkit", "train", str(recipe), *overrides], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "checkpoints").is_dir() and any(p.name.startswith("stage-") for p in (run / "checkpoints").iterdir()):
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended before its first checkpoint: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no checkpoint within the timeout")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(micro_recipe: Path, uninterrupted: Path, capsys) -> None:
    run = micro_recipe.parent / "run"
    proc = _spawn(micro_recipe, "train.save_every=2")
    _wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "stopped by SIGTERM; checkpoint saved at" in err
    saved = _checkpoints(run)[-1]
    assert f"checkpoint saved at {run / 'checkpoints' / saved}" in err
    assert train(micro_recipe, "train.save_every=2", "train.resume=true") == 0
    _resumed_from(run, saved, capsys.readouterr().out)
    print(f"stopped at {saved}; the stopped run's stderr ended: {err[-1500:]}")  # shown when the next line fails
    assert_same_weights(final_weights(run), final_weights(uninterrupted))


def _stderr_until(proc: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """What ``proc`` wrote to stderr up to ``text`` (read as it comes: a progress bar's first draw ends in no
    newline); the test fails when ``text`` has not come within ``timeout`` seconds."""
    assert proc.stderr is not None
    seen, deadline = b"", time.monotonic() + timeout
    while text.encode() not in seen:
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(proc.stderr.fileno(), 4096) if ready else b""
        if not chunk:
            proc.kill()
            pytest.fail(f"no {text!r} within {timeout} s: {seen.decode(errors='replace')[-600:]}")
        seen += chunk
    return seen.decode(errors="replace")


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {path} while the run went on")
        time.sleep(0.02)


SLOW_SUITE = ("name: slow\ntasks:\n  - {type: niah, name: passkey, lengths: [64], depths: [0.0, 0.5, 1.0], "
              "samples: 100, batch_tokens: 1024}\n")
"""300 prompts, 16 a batch: the micro model takes seconds over them, saving its results after each batch."""


@pytest.mark.slow
def test_a_stop_signal_during_an_evaluation_stops_it_and_the_resumed_run_finishes_it(tmp_path: Path,
                                                                                     capsys) -> None:
    """SIGINT in the evaluation after stage 0 ends it at its batch under way, keeping what it finished and the
    stage's checkpoint (exit 130, no second signal needed); the resumed run evaluates the prompts left, then trains
    stage 1."""
    from tests.conftest import MICRO_RECIPE, write_recipe

    (tmp_path / "slow.yaml").write_text(SLOW_SUITE)
    short, long = (dict(stage, max_steps=2) for stage in MICRO_RECIPE["train"]["stages"])
    train_spec = dict(MICRO_RECIPE["train"], stages=[short, dict(long, evaluate=False)])
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, train=train_spec, output={"dir": str(tmp_path / "run")},
                                         eval={"suites": [str(tmp_path / "slow.yaml")], "before": False}))
    run, results = tmp_path / "run", tmp_path / "run" / "eval" / "stage-0-short" / "slow.json"
    proc = _spawn(recipe)
    _stderr_until(proc, "slow/passkey:")
    _wait_for(results, proc)  # its first batch is saved
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-600:]
    saved = run / "checkpoints" / "stage-0-step-000002"
    assert "Traceback" not in err and err.splitlines()[-1] == (
        f"stopped by SIGINT during evaluation stage-0-short; checkpoint saved at {saved}; continue with "
        "train.resume=true")
    assert _checkpoints(run) == [saved.name] and [row["global_step"] for row in read_metrics(run)] == [1, 2]
    entry = json.loads(results.read_text())["tasks"]["passkey"]
    assert not entry["complete"] and 0 < len(entry["cells"]) < 300

    assert train(recipe, "train.resume=true") == 0
    printed = capsys.readouterr()
    assert f"resumed from {saved}" in printed.out
    assert f"| 0/{300 - len(entry['cells'])} [" in printed.err  # the prompts left, not all 300
    entry = json.loads(results.read_text())["tasks"]["passkey"]
    assert entry["complete"] and len(entry["cells"]) == 300
    assert [row["global_step"] for row in read_metrics(run)] == [1, 2, 3, 4] and (run / "final").is_dir()


@pytest.mark.slow
def test_a_stop_signal_in_the_starting_models_evaluation_stops_it_and_the_same_command_finishes_it(
        tmp_path: Path, capsys) -> None:
    """SIGTERM in the evaluation of the starting model (``eval.before``) ends it at its batch under way with exit 143
    and one line saying nothing was trained; the same command again evaluates only the prompts left, then trains."""
    from tests.conftest import MICRO_RECIPE, write_recipe

    (tmp_path / "slow.yaml").write_text(SLOW_SUITE)
    stages = [dict(MICRO_RECIPE["train"]["stages"][0], max_steps=2)]
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, train=dict(MICRO_RECIPE["train"], stages=stages),
                                         output={"dir": str(tmp_path / "run")},
                                         eval={"suites": [str(tmp_path / "slow.yaml")], "before": True}))
    run, results = tmp_path / "run", tmp_path / "run" / "eval" / "base" / "slow.json"
    proc = _spawn(recipe)
    _stderr_until(proc, "slow/passkey:")
    _wait_for(results, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-600:]
    assert "Traceback" not in err and err.splitlines()[-1] == (
        "stopped by SIGTERM during evaluation base; nothing trained yet: the same command continues, reusing what "
        "the evaluation finished")
    assert not (run / "checkpoints").exists() or _checkpoints(run) == []
    entry = json.loads(results.read_text())["tasks"]["passkey"]
    assert not entry["complete"] and 0 < len(entry["cells"]) < 300

    assert train(recipe) == 0
    assert f"| 0/{300 - len(entry['cells'])} [" in capsys.readouterr().err
    assert json.loads(results.read_text())["tasks"]["passkey"]["complete"]
    assert [row["global_step"] for row in read_metrics(run)] == [1, 2] and (run / "final").is_dir()


@pytest.mark.parametrize("during", ["final", "report"])
def test_a_stop_signal_while_the_run_finishes_stops_it_and_the_resumed_run_finishes(
        during: str, micro_recipe: Path, uninterrupted: Path, monkeypatch, capsys) -> None:
    """SIGTERM while ``final/`` is saved or the report written (after the last stage, which saved its checkpoint) ends
    that work at once: exit 143, one line naming it, no ``final/`` half written (none at all, nor a temporary folder,
    when cut short in the save); the resumed run writes both, with the weights of a run never stopped."""
    import toolkit.model.saving
    import toolkit.report.report

    module, name = ((toolkit.model.saving, "_save_model") if during == "final" else
                    (toolkit.report.report, "write_text"))
    original = getattr(module, name)

    def stopped_midway(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, stopped_midway)
    run = micro_recipe.parent / "run"
    assert train(micro_recipe, "train.save_every=2") == 143
    what = "the save of final/" if during == "final" else "the report"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"stopped by SIGTERM during {what}; checkpoint saved at {run / 'checkpoints' / 'stage-1-step-000004'}; "
        "continue with train.resume=true")
    assert not (run / "report.html").exists()
    assert (run / "final").is_dir() == (during == "report")
    assert not [path.name for path in run.iterdir() if path.name.startswith(".final")]
    monkeypatch.undo()
    assert train(micro_recipe, "train.save_every=2", "train.resume=true") == 0
    assert_same_weights(final_weights(run), final_weights(uninterrupted))
    assert (run / "report.md").is_file() and (run / "report.html").is_file()


def test_a_stop_signal_ends_the_work_run_until_stopped_and_only_it() -> None:
    """Inside ``run_until_stopped`` a stop signal ends the work where it is; outside it a signal is only noted, and
    work that comes after one does not start."""
    done: list[str] = []

    def work() -> None:
        signal.raise_signal(signal.SIGTERM)
        done.append("went on")

    with stop_on_signals() as flag:
        flag.run_until_stopped(work)
        assert flag.signum == signal.SIGTERM and done == []
        signal.raise_signal(signal.SIGINT)
        assert flag.signum == signal.SIGINT
        flag.run_until_stopped(lambda: done.append("started"))
        assert done == []


@pytest.mark.slow
def test_kill_9_resumes_from_the_last_complete_checkpoint_past_a_torn_one(micro_recipe: Path, uninterrupted: Path,
                                                                          capsys) -> None:
    run = micro_recipe.parent / "run"
    proc = _spawn(micro_recipe, "train.save_every=2")
    _wait_for_checkpoint(run, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (run / "final").exists()  # killed mid-run
    complete = _checkpoints(run)[-1]
    # what a kill during a write leaves behind: a temporary folder with part of a checkpoint
    partial = run / "checkpoints" / ".tmp-stage-0-step-000099"
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "model.safetensors").write_bytes(b"torn")
    assert train(micro_recipe, "train.save_every=2", "train.resume=true") == 0
    assert not partial.exists()
    _resumed_from(run, complete, capsys.readouterr().out)
    assert_same_weights(final_weights(run), final_weights(uninterrupted))


def test_checkpoint_folders_without_state_are_not_resumed(tmp_path: Path) -> None:
    from accelerate import Accelerator

    manager = checkpoints_module.CheckpointManager(tmp_path, 2, Accelerator(cpu=True))
    (tmp_path / "checkpoints" / "stage-0-step-000004").mkdir(parents=True)
    assert manager.latest() is None


def test_an_evaluation_cut_short_is_finished_by_the_resumed_run(tmp_path: Path, monkeypatch, capsys) -> None:
    """A run that dies in the evaluation after its last stage (out of memory in the second task) leaves the first
    task's results; resumed, it evaluates the second, reuses the first, and writes ``final/`` and the report."""
    from tests.conftest import MICRO_RECIPE, write_recipe
    from toolkit.evals.transformers_backend import TransformersBackend

    suite = tmp_path / "mini.yaml"
    suite.write_text("name: mini\ntasks:\n  - {type: niah, name: a, lengths: [64], depths: [0.5], samples: 2}\n"
                     "  - {type: niah, name: b, lengths: [64], depths: [0.5], samples: 2}\n")
    stages = [dict(MICRO_RECIPE["train"]["stages"][0], max_steps=2)]
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, train=dict(MICRO_RECIPE["train"], stages=stages),
                                         eval={"suites": [str(suite)], "before": False},
                                         output={"dir": str(tmp_path / "run")}))
    scored: list[int] = []
    original = TransformersBackend.greedy_matches

    def greedy_matches(self, requests):
        scored.append(len(requests))
        if len(scored) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(self, requests)

    monkeypatch.setattr(TransformersBackend, "greedy_matches", greedy_matches)
    assert train(recipe) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "failed: stage-0-short/mini b: out of memory while evaluating; what it finished is saved and a rerun continues "
        "from there (train.resume=true for a run): lower the task's batch_tokens or batch_size, or leave out its "
        "longest lengths")
    run = tmp_path / "run"
    results = run / "eval" / "stage-0-short" / "mini.json"
    assert list(json.loads(results.read_text())["tasks"]) == ["a"] and not (run / "final").exists()

    assert train(recipe, "train.resume=true") == 0
    assert scored == [2, 2, 2]  # a once, b cut short, b again: a's results were reused
    tasks = json.loads(results.read_text())["tasks"]
    assert sorted(tasks) == ["a", "b"] and all(entry["complete"] for entry in tasks.values())
    assert (run / "final").is_dir() and "mini" in (run / "report.md").read_text()
