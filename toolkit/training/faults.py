"""Faults during training: stop signals become a checkpoint and a clean exit, a non-finite loss or an
out-of-memory error becomes one message saying what to change."""

from __future__ import annotations

import signal
from contextlib import contextmanager

from toolkit.errors import RunFailure, UserError


class StopFlag:
    """Set by SIGTERM or SIGINT; the loop checks it after each optimizer step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def stop_on_signals():
    """Within the block, SIGTERM and SIGINT set the returned flag instead of killing the process."""
    flag = StopFlag()
    previous = {}

    def handler(signum, _frame):
        flag.signum = signum

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
