"""PNG plots (matplotlib's object API, no pyplot state): NIAH heatmap (one grid, or several side by side),
score vs length, loss by position, training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _length_label(length: int | str) -> str:
    n = int(length)
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def niah_heatmap(grid: Mapping[str, Mapping[str, float]], title: str, path: Path) -> Path:
    """Depth (rows, 0% at the top) x length (columns), cells annotated with accuracy in percent."""
    lengths = sorted(grid, key=int)
    depths = sorted({d for row in grid.values() for d in row}, key=float)
    values = [[grid[length].get(depth, float("nan")) * 100 for length in lengths] for depth in depths]
    fig = Figure(figsize=(1.1 * len(lengths) + 2.5, 0.55 * len(depths) + 1.8))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")  # the familiar red-to-green
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            dark = value > 80 or value < 15  # the ends of RdYlGn are dark
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(lengths)), [_length_label(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{float(d) * 100:.0f}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    return _save(fig, path)


def niah_heatmaps(panels: Sequence[tuple[str, Mapping[str, Mapping[str, float]]]], title: str, path: Path) -> Path:
    """Several needle grids side by side (e.g. before and after extension), one shared colour scale."""
    fig = Figure(figsize=(sum(1.0 * len(grid) + 1.2 for _, grid in panels) + 1.5,
                          0.55 * max(len({d for row in grid.values() for d in row}) for _, grid in panels) + 2.0),
                 layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for index, (ax, (label, grid)) in enumerate(zip(axes, panels)):
        lengths = sorted(grid, key=int)
        depths = sorted({d for row in grid.values() for d in row}, key=float)
        values = [[grid[length].get(depth, float("nan")) * 100 for length in lengths] for depth in depths]
        image = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                dark = value > 80 or value < 15
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
        ax.set_xticks(range(len(lengths)), [_length_label(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{float(d) * 100:.0f}%" for d in depths] if index == 0 else [])
        ax.set_xlabel("context length (tokens)")
        if index == 0:
            ax.set_ylabel("needle depth")
        ax.set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="accuracy (%)", shrink=0.9)
    return _save(fig, path)


def score_vs_length(series: Mapping[str, Mapping[str, float]], title: str, path: Path,
                    threshold: float | None = None) -> Path:
    """One line per label (e.g. per tag or per RoPE setting); lengths on a log2 axis."""
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.add_subplot()
    for label, scores in series.items():
        lengths = sorted(scores, key=int)
        ax.plot([int(n) for n in lengths], [scores[n] * 100 for n in lengths], marker="o", label=label)
    if threshold is not None:
        ax.axhline(threshold * 100, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold * 100:g}")
    ax.set_xscale("log", base=2)
    ticks = sorted({int(n) for scores in series.values() for n in scores})
    ax.set_xticks(ticks, [_length_label(n) for n in ticks])
    ax.minorticks_off()
    ax.set_ylim(-3, 103)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("score (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def loss_by_position(series: Mapping[str, Mapping[str, float]], title: str, path: Path) -> Path:
    """Mean token loss per position bucket (bucket start on the x axis), one line per label."""
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.add_subplot()
    for label, losses in series.items():
        starts = sorted(losses, key=int)
        ax.plot([int(s) for s in starts], [losses[s] for s in starts], marker=".", label=label)
    ax.set_xlabel("token position (bucket start)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


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
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)
