"""Learning-rate schedules as a pure function of the step, so resuming needs no scheduler state."""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_steps: int, kind: str, min_lr_ratio: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``: linear warmup, then
    cosine or linear decay to ``min_lr_ratio * peak_lr``, or constant."""
    if warmup_steps and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return peak_lr
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    if kind == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "linear":
        shape = 1.0 - progress
    else:
        raise ValueError(f"unknown scheduler {kind!r}")
    return peak_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * shape)
