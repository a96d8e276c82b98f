"""The training loop: one stage of optimizer steps, the same code for full and LoRA, every stage and
every launcher (one process, DDP, FSDP2, DeepSpeed through accelerate).

A step (:func:`train_step`) is ``grad_accum`` micro-batches accumulated through ``accelerator.accumulate`` (what
each engine does between them: :mod:`toolkit.parallel.engines`); its loss is the sum of token losses over every
micro-batch and process divided by their number of target tokens, so each token weighs the same however the step is
split over micro-batches and processes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from toolkit.data.batches import Batch, StageBatches, as_batch, target_tokens
from toolkit.errors import Stopped, UserError
from toolkit.formatting.progress import progress_bar
from toolkit.parallel.engines import backward, start_stage
from toolkit.parallel.sequence import row_sharers, shard_for_sequence_parallel
from toolkit.recipe.schema import StageSpec, TrainSpec
from toolkit.training.checkpoints import CheckpointManager
from toolkit.training.data_inputs import stage_inputs
from toolkit.training.faults import StopFlag, data_mistake, non_finite_loss, on_any_process, out_of_memory
from toolkit.training.metrics import MetricsLogger, peak_memory_gib, reset_peak_memory
from toolkit.training.objective import objective_loss
from toolkit.training.resume_record import TrainerState
from toolkit.training.schedule import lr_at


def tokens_per_step(stage: StageSpec, data_parallel: int) -> int:
    """Tokens one optimizer step of ``stage`` trains on, over ``data_parallel`` groups of processes that train on
    different rows (``toolkit.parallel.sequence.data_parallel_size``)."""
    return stage.seq_len * stage.batch_size * stage.grad_accum * data_parallel


def stage_steps(stage: StageSpec, train: TrainSpec, data_parallel: int) -> int:
    """Optimizer steps of a stage: its max_steps, or its token budget over tokens per step; capped by
    ``train.max_steps``."""
    if stage.max_steps is not None:
        steps = stage.max_steps
    else:
        assert stage.max_tokens is not None  # the schema: exactly one of max_steps and max_tokens
        steps = max(1, math.ceil(stage.max_tokens / tokens_per_step(stage, data_parallel)))
    return min(steps, train.max_steps) if train.max_steps else steps


@dataclass
class StageJob:
    """What one stage needs beyond the shared objects: its index, spec, length in steps and data."""

    index: int
    spec: StageSpec
    steps: int
    step_tokens: int
    """Tokens of one optimizer step over all processes."""
    batches: StageBatches
    """Built from where ``start`` left the stream (``toolkit.data.batches.stage_batches``)."""
    start: TrainerState | None
    """Resume point inside this stage (its step counts as done), or None to start at step 0."""
    global_step: int


@dataclass
class LoopParts:
    """The shared objects every stage trains with (already prepared by accelerate)."""

    accelerator: Accelerator
    objective: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train: TrainSpec
    checkpoints: CheckpointManager
    logger: MetricsLogger
    log_every: int
    stop: StopFlag


def train_step(parts: LoopParts, micro_batches: Sequence[Batch], stage: str, step: int) -> float:
    """One optimizer step over this process's ``micro_batches`` (``grad_accum`` of them); returns its loss, the mean
    over the target tokens of every micro-batch and process. ``stage`` and ``step`` (1-based) name the step in the
    error a non-finite loss raises."""
    acc = parts.accelerator
    micro = [as_batch(batch, acc.device) for batch in micro_batches]
    targets = torch.stack([target_tokens(batch) for batch in micro]).sum()
    window = (acc.reduce(targets, "sum") // row_sharers(acc)).clamp(min=1)
    scale = acc.num_processes / window  # gradients are averaged over processes; this makes a mean over tokens
    loss_sum = torch.zeros((), device=acc.device)
    for batch in micro:
        with acc.accumulate(parts.objective), shard_for_sequence_parallel(acc, batch):
            with acc.autocast():
                total, _count = objective_loss(parts.objective, batch)
            if not torch.isfinite(total):
                kept = parts.checkpoints.latest()
                raise non_finite_loss(stage, step, str(kept[0]) if kept else None)
            backward(acc, total * scale)
        loss_sum += total.detach().float()
    if parts.train.max_grad_norm:
        params = [p for p in parts.objective.parameters() if p.requires_grad]
        acc.clip_grad_norm_(params, parts.train.max_grad_norm)
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    return (acc.reduce(loss_sum, "sum") / window).item()


def _draw(parts: LoopParts, job: StageJob, unsaved: TrainerState | None) -> list[Batch]:
    """The micro-batches of one step. A mistake in the data met by any process stops every one of them after saving
    ``unsaved`` (the last step trained, when no checkpoint holds it), so the run resumes once the data is mended."""
    error: UserError | None = None
    try:
        batches = [next(job.batches) for _ in range(job.spec.grad_accum)]
    except UserError as met:
        error, batches = met, []
    if on_any_process(parts.accelerator, int(error is not None)):
        if unsaved is not None:
            parts.checkpoints.save(unsaved)
        kept = parts.checkpoints.latest()
        error = error or UserError(f"{parts.train.data_field(job.index)}: another process met a mistake in the data")
        raise data_mistake(error, str(kept[0]) if kept else None) from None
    return batches


def _save_and_heed_stops(parts: LoopParts, state: TrainerState, stage: str, step_s: float | None) -> Path | None:
    """After a step: its checkpoint when one is due (every ``train.save_every`` steps and at the stage's end), then
    every process stops together when any of them was sent a stop signal (the flag is read once a step). ``step_s``:
    the step's seconds, for the warning when stops would come too late; None for a step that may have compiled
    kernels. Returns the checkpoint written, if any."""
    acc, train = parts.accelerator, parts.train
    saved = None
    if state.stage_done or (train.save_every and state.step % train.save_every == 0):
        saved = parts.checkpoints.save(state)
    if step_s is not None and acc.is_main_process:
        parts.stop.warn_if_too_slow(stage, step_s, parts.checkpoints.last_save_s)
    stop = parts.stop.signum if parts.stop else None
    if signum := on_any_process(acc, stop or 0):
        raise Stopped(signum, str(saved or parts.checkpoints.save(state)))
    return saved


def train_stage(parts: LoopParts, job: StageJob) -> int:
    """Run the remaining optimizer steps of one stage; returns the run's global step at its end. A logged row has the
    step's speed over every token of its rows (``tokens_per_s``) and over those that are no padding
    (``real_tokens_per_s``), and the peak memory since the stage's previous row or its start (``peak_memory_gib``)."""
    acc, spec, train = parts.accelerator, job.spec, parts.train
    name = train.stage_name(job.index)
    first = job.start.step if job.start else 0
    if first == 0:
        parts.optimizer.state.clear()  # each stage starts with fresh moments, as separate runs would
        parts.checkpoints.record_inputs(job.index, stage_inputs(train, job.index))
    start_stage(acc, spec.grad_accum)
    global_step = job.global_step
    bar = progress_bar(total=job.steps, initial=first, desc=f"train {name} @ {spec.seq_len}", unit="step",
               disable=not acc.is_main_process, dynamic_ncols=True)
    parts.objective.train()

    def summed(counts: torch.Tensor) -> torch.Tensor:
        """``counts`` summed over every process."""
        return acc.reduce(counts.to(acc.device), "sum").cpu()

    reset_peak_memory(acc.device)
    started = time.perf_counter()
    state: TrainerState | None = None  # after the last step trained here
    saved: Path | None = None  # the checkpoint of that step, when one was written
    try:
        for step in range(first, job.steps):
            tick = time.perf_counter()
            lr = lr_at(step, job.steps, spec.lr, spec.warmup_steps, train.scheduler, train.min_lr_ratio)
            for group in parts.optimizer.param_groups:
                group["lr"] = lr
            drawn = job.batches.drawn
            micro_batches = _draw(parts, job, state if saved is None else None)
            loss = train_step(parts, micro_batches, name, step + 1)
            global_step += 1
            seconds = max(time.perf_counter() - tick, 1e-9)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{job.step_tokens / seconds:,.0f}",
                            refresh=False)  # drawn by update, as often as the bar redraws
            bar.update(1)
            if (step + 1) % parts.log_every == 0 or step + 1 == job.steps:
                real = int(summed(torch.tensor(job.batches.drawn - drawn))) // job.batches.sharers
                parts.logger.log({"stage": job.index, "stage_name": name, "step": step + 1,
                                  "global_step": global_step, "loss": loss, "lr": lr,
                                  "tokens_per_s": job.step_tokens / seconds, "real_tokens_per_s": real / seconds,
                                  "peak_memory_gib": peak_memory_gib(acc.device),
                                  "elapsed_s": time.perf_counter() - started, "seq_len": spec.seq_len,
                                  **job.batches.logged(summed)})
                if step + 1 < job.steps:  # after the last row the stage's peak stays for the caller (benchmarks)
                    reset_peak_memory(acc.device)
            state = TrainerState(job.index, step + 1, global_step, stage_done=step + 1 == job.steps,
                                 stream=job.batches.position())
            saved = _save_and_heed_stops(parts, state, name, seconds if step > first else None)
    except torch.OutOfMemoryError:
        raise out_of_memory(name, spec.seq_len) from None
    finally:
        bar.close()
    return global_step
