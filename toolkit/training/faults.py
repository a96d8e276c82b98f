"""Faults during training: stop signals become a checkpoint and a clean exit, a non-finite loss or an
out-of-memory error becomes one message saying what to change."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from accelerate import Accelerator

from toolkit.errors import RunFailure, UserError

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
"""torchrun's wait, in seconds, between passing a stop signal on to its processes and killing them (read from torch
2.12 on; 30 before, and by default)."""
TORCHRUN_GRACE_S = 30


def launcher_grace_s() -> int | None:
    """How long torchrun (``accelerate launch`` of several processes) lets its processes finish after passing a stop
    signal on to them; None when torchrun did not start this process."""
    if not torch.distributed.is_torchelastic_launched():
        return None
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) < (2, 12):
        return TORCHRUN_GRACE_S
    try:
        return int(os.environ.get(SHUTDOWN_TIMEOUT_ENV, TORCHRUN_GRACE_S))
    except ValueError:
        return TORCHRUN_GRACE_S


class StopSignal(KeyboardInterrupt):
    """A stop signal met inside :meth:`StopFlag.run_until_stopped`, raised where Ctrl-C raises KeyboardInterrupt: work
    that Ctrl-C stops cleanly (an evaluation, which keeps what it finished, as ``toolkit eval`` does) stops the same
    way."""


class StopFlag:
    """Set by SIGTERM or SIGINT; the loop checks it after each optimizer step, and work run by
    :meth:`run_until_stopped` (an evaluation) ends at once. ``grace_s``: how long the launcher waits after a stop
    signal before it kills the process (:func:`launcher_grace_s`), when known."""

    def __init__(self, grace_s: int | None = None) -> None:
        self.signum: int | None = None
        self.grace_s = grace_s
        self._warned = False
        self._interrupting = False

    def __bool__(self) -> bool:
        return self.signum is not None

    def receive(self, signum: int) -> None:
        """A stop signal's handler: note it; within :meth:`run_until_stopped`, also end that work at once (once: a
        second signal only notes itself)."""
        self.signum = signum
        if self._interrupting:
            self._interrupting = False
            raise StopSignal

    def run_until_stopped(self, work: Callable[[], object]) -> None:
        """Run ``work`` unless a stop signal came already; one that comes meanwhile ends it at once. The signal stays
        in the flag for the caller to act on."""
        self._interrupting = True
        try:
            if self.signum is None:
                work()
            self._interrupting = False  # still in the try: a signal just before this line raises here
        except StopSignal:
            pass
        finally:
            self._interrupting = False

    def warn_if_too_slow(self, stage: str, step_s: float, save_s: float) -> None:
        """Warn once when a step and a checkpoint take longer than the launcher's grace: a stop signal met early in
        a step would then be acted on after the processes are killed, losing the steps since the last checkpoint."""
        if self._warned or self.grace_s is None or step_s + save_s <= self.grace_s:
            return
        self._warned = True
        needed = int(1.5 * (step_s + save_s)) + 1
        log.warning("a step of stage %s takes %.0f s and a checkpoint %.0f s, longer than the %d s torchrun waits "
                    "after passing on a stop signal before it kills the processes: a stop would lose the steps since "
                    "the last checkpoint. Launch with %s=%d (torch 2.12 or later) or set train.save_every", stage,
                    step_s, save_s, self.grace_s, SHUTDOWN_TIMEOUT_ENV, needed)


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Within the block, SIGTERM and SIGINT set the returned flag (:meth:`StopFlag.receive`) instead of killing the
    process."""
    flag = StopFlag(launcher_grace_s())
    previous = {}

    def handler(signum: int, _frame: object) -> None:
        flag.receive(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def on_any_process(acc: Accelerator, value: int) -> int:
    """The largest of ``value`` over every process (one small gather; none in a single process): what every process
    acts on together, since a checkpoint is saved by all of them at once."""
    if acc.num_processes == 1:
        return value
    return int(acc.gather(torch.tensor([value], device=acc.device)).max().item())


def non_finite_loss(stage: str, step: int, last_checkpoint: str | None) -> RunFailure:
    kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
    return RunFailure(f"non-finite loss in stage {stage} at step {step}; {kept}. Lower the stage's lr, "
                      "raise warmup_steps or check the data, then resume with train.resume=true")


def data_mistake(error: UserError, last_checkpoint: str | None) -> UserError:
    """A mistake in the data met during training (a bad record past the first, which is checked up front), saying
    where the steps trained so far are kept."""
    if last_checkpoint is None:
        return UserError(f"{error}; no step was saved yet: mend the data and run again")
    return UserError(f"{error}; the steps trained so far are in {last_checkpoint}: mend the data, then resume with "
                     "train.resume=true")


def out_of_memory(stage: str, seq_len: int) -> RunFailure:
    return RunFailure(
        f"out of memory in stage {stage} at seq_len {seq_len}: switch on train.gradient_checkpointing, "
        "train.activation_offload, a smaller train.loss_chunk_size or train.tiled_mlp, use method.kind: lora, "
        "lower the stage's seq_len or batch_size, or spread the sequence with parallel.sequence; "
        "`python -m toolkit plan RECIPE --gpus N --gpu-memory GB` estimates what fits")
