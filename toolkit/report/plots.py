"""The report's own PNG plot: training curves (each task type draws its own, :mod:`toolkit.evals.plots`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from toolkit.evals.plots import finish_axes, new_figure, save_figure


def training_curves(stages: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> Path:
    """Loss and tokens/s against the global step, one colour per stage (``stages``: the metrics rows by stage)."""
    fig = new_figure(10, 3.6)
    loss_ax, speed_ax = fig.subplots(1, 2)
    for name, points in stages.items():
        steps = [p["global_step"] for p in points]
        loss_ax.plot(steps, [p["loss"] for p in points], label=name)
        speed_ax.plot(steps, [p.get("tokens_per_s", float("nan")) for p in points], label=name)
    for ax, label in ((loss_ax, "loss"), (speed_ax, "tokens / s")):
        finish_axes(ax, "optimizer step", label)
    return save_figure(fig, path)
