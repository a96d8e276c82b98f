"""Helpers for tests that run the real CLI on the micro recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from benchmarks.gpu_check_training import stop
from toolkit.cli import main
from toolkit.parallel.engines import stale_build_locks
from toolkit.run_folder import FINAL, read_metrics
from toolkit.training.faults import StopFlag

ROOT = Path(__file__).resolve().parents[1]
NEEDLE_SUITE = ("name: needles\ntasks:\n  - {type: niah, name: passkey, lengths: [64, 128], depths: [0.0, 1.0], "
                "samples: 2}\n  - {type: perplexity, name: loss, length: 128, bucket: 64, documents: 2}\n")
"""A suite small enough to evaluate the micro recipe before and after each stage in seconds: needles (which the
micro model seldom finds, so their scores alone tell little) and the loss by position (which tells every weight
apart)."""
HALF_BATCH = ("stages[0].batch_size=2", "stages[1].batch_size=1")
"""The micro recipe's batches halved (stage 0: 4, stage 1: 2 x grad_accum 2), for each of two processes."""


def train(recipe: Path, *overrides: str) -> int:
    return main(["train", str(recipe), *overrides])


def metrics(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    final = run_dir / FINAL
    name = "adapter_model.safetensors" if (final / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(final / name)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6,
                        dtype: torch.dtype | None = None) -> None:
    """The same keys and values within ``atol``; with ``dtype``, every tensor of ``a`` in it. A failure names every
    tensor that differs, each with its largest difference."""
    assert a.keys() == b.keys()
    assert dtype is None or not [key for key in a if a[key].dtype != dtype], {key: a[key].dtype for key in a}
    apart = {key: how for key in a if (how := _apart(a[key], b[key], atol))}
    assert not apart, f"{len(apart)} of {len(a)} tensors differ by more than {atol}: {apart}"


def _apart(a: torch.Tensor, b: torch.Tensor, atol: float) -> str | None:
    """How ``a`` and ``b`` differ (dtype, shape, or their largest difference beyond ``atol``); None when they agree."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return f"{a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}"
    largest = (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
    return f"{largest:.3g}" if largest > atol else None


def needle_suite(folder: Path) -> Path:
    """:data:`NEEDLE_SUITE` written to ``folder/needles.yaml``."""
    path = folder / "needles.yaml"
    path.write_text(NEEDLE_SUITE)
    return path


def needle_scores(run_dir: Path) -> dict[str, dict]:
    """Each evaluation's scores of :data:`NEEDLE_SUITE`, by tag: the needles' by length, the loss by position."""
    found = {}
    for folder in sorted((run_dir / "eval").iterdir()):
        tasks = json.loads((folder / "needles.json").read_text())["tasks"]
        found[folder.name] = {"passkey": tasks["passkey"]["scores_by_length"], "loss": tasks["loss"]["loss_by_bucket"]}
    return found


def assert_same_scores(a: dict[str, dict], b: dict[str, dict], loss_atol: float = 1e-4) -> None:
    """:func:`needle_scores` of two runs: the same evaluations, the same needle scores, losses within ``loss_atol``
    (engines differ in the order of their sums as much as the training losses they are held to); and training moved
    the loss far more, so the comparison tells the weights of each evaluation apart."""
    assert a.keys() == b.keys()
    for tag in a:
        assert a[tag]["passkey"] == b[tag]["passkey"], tag
        assert a[tag]["loss"] == pytest.approx(b[tag]["loss"], abs=loss_atol), tag
    first, last = (a[tag]["loss"] for tag in (min(a), max(a)))
    assert all(abs(first[bucket] - last[bucket]) > 10 * loss_atol for bucket in first), (first, last)


def accelerate_launch(config: Path, *args: str, options: tuple[str, ...] = (),
                      env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file config [options] args`` from the repository, one thread per process. A
    DeepSpeed launch fails at once where a killed process left a build lock its ops would wait on until the timeout;
    a launch that outlives ``timeout`` is killed with its training processes and the locks they held."""
    if yaml.safe_load(config.read_text()).get("distributed_type") == "DEEPSPEED":
        assert not stale_build_locks(), f"delete the stale torch extension build locks {stale_build_locks()}"
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--config_file", str(config), *options, "--num_cpu_threads_per_process",
               "1", *args]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    started = time.time()
    proc = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc, since=started)  # the training processes too: torch's launcher starts them in their own session
        raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def make_n(*args: str) -> subprocess.CompletedProcess:
    """``make -n ARGS`` from the repository, as a user runs it: none of the variables or flags of a make this test
    may run under (``make test``)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("RUN", "RECIPE", "ARGS", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


class StopAfter(StopFlag):
    """A stop flag that turns on after ``n`` optimizer steps, as a SIGTERM would."""

    def __init__(self, n: int):
        super().__init__()
        self.checks, self.n = 0, n

    def __bool__(self) -> bool:
        self.checks += 1
        if self.checks >= self.n:
            self.signum = 15
        return self.signum is not None


def train_stopped(recipe: Path, steps: int, *overrides: str) -> int:
    """``train`` of ``recipe`` stopped after ``steps`` optimizer steps, as a SIGTERM would stop it (exit 143)."""
    import toolkit.runner

    @contextmanager
    def fake_signals() -> Iterator[StopAfter]:
        yield StopAfter(steps)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(toolkit.runner, "stop_on_signals", fake_signals)
        return train(recipe, *overrides)
