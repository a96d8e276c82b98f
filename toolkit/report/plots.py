"""The report's own PNG plots: needle grids side by side (before and after extension) and training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from toolkit.evals.plots import draw_grid, finish_axes, save_figure


def niah_heatmaps(panels: Sequence[tuple[str, Mapping[str, Mapping[str, float]]]], title: str, path: Path) -> Path:
    """Several needle grids side by side (e.g. before and after extension), one shared colour scale."""
    fig = Figure(figsize=(sum(1.0 * len(grid) + 1.2 for _, grid in panels) + 1.5,
                          0.55 * max(len({d for row in grid.values() for d in row}) for _, grid in panels) + 2.0),
                 layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for index, (ax, (label, grid)) in enumerate(zip(axes, panels, strict=True)):
        image = draw_grid(ax, grid, label, labelled=index == 0)
    fig.suptitle(title, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="accuracy (%)", shrink=0.9)
    return save_figure(fig, path)


def training_curves(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Loss and tokens/s against the global step, one colour per stage."""
    fig = Figure(figsize=(10, 3.6))
    loss_ax, speed_ax = fig.subplots(1, 2)
    stages: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        stages.setdefault(str(row.get("stage_name", row.get("stage", "?"))), []).append(row)
    for name, points in stages.items():
        steps = [p["global_step"] for p in points]
        loss_ax.plot(steps, [p["loss"] for p in points], label=name)
        speed_ax.plot(steps, [p.get("tokens_per_s", float("nan")) for p in points], label=name)
    for ax, label in ((loss_ax, "loss"), (speed_ax, "tokens / s")):
        finish_axes(ax, "optimizer step", label)
    return save_figure(fig, path)
