"""PNG plots the task types draw (matplotlib's object API, no pyplot state): NIAH heatmaps (one grid, or several
side by side for the report), score vs length, loss by position; and the pieces the report's own plots
(:mod:`toolkit.report.plots`) share. matplotlib is imported when the first figure is made."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.output_paths import atomic_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float, height: float, **options: Any) -> Figure:
    """A figure of ``width`` x ``height`` inches outside pyplot's state (``options``: matplotlib's, e.g. layout)."""
    from matplotlib.figure import Figure  # a second of imports: only where a plot is drawn

    return Figure(figsize=(width, height), **options)


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` in the format its suffix names, through a temporary file renamed into place."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or None, dpi=110, bbox_inches="tight")
    return path


def _length_label(length: int | str) -> str:
    n = int(length)
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def draw_grid(ax: Any, grid: Mapping[str, Mapping[str, float]], title: str, labelled: bool = True) -> Any:
    """One needle grid on ``ax``: depth (rows, 0% at the top) x length, cells annotated with accuracy in percent;
    ``labelled``: with the depth axis's labels. Returns the image (for a colour bar)."""
    lengths = sorted(grid, key=int)
    depths = sorted({d for row in grid.values() for d in row}, key=float)
    values = [[grid[length].get(depth, float("nan")) * 100 for length in lengths] for depth in depths]
    image = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")  # the familiar red-to-green
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            dark = value > 80 or value < 15  # the ends of RdYlGn are dark
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(lengths)), [_length_label(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{float(d) * 100:.0f}%" for d in depths] if labelled else [])
    ax.set_xlabel("context length (tokens)")
    if labelled:
        ax.set_ylabel("needle depth")
    ax.set_title(title, fontsize=9)
    return image


def niah_heatmap(grid: Mapping[str, Mapping[str, float]], title: str, path: Path) -> Path:
    """Depth (rows, 0% at the top) x length (columns), cells annotated with accuracy in percent."""
    depths = {d for row in grid.values() for d in row}
    fig = new_figure(1.1 * len(grid) + 2.5, 0.55 * len(depths) + 1.8)
    ax = fig.add_subplot()
    fig.colorbar(draw_grid(ax, grid, title), ax=ax, label="accuracy (%)")
    return save_figure(fig, path)


def niah_heatmaps(panels: Sequence[tuple[str, Mapping[str, Mapping[str, float]]]], title: str, path: Path) -> Path:
    """Several needle grids side by side (e.g. before and after extension), one shared colour scale."""
    fig = new_figure(sum(1.0 * len(grid) + 1.2 for _, grid in panels) + 1.5,
                     0.55 * max(len({d for row in grid.values() for d in row}) for _, grid in panels) + 2.0,
                     layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for index, (ax, (label, grid)) in enumerate(zip(axes, panels, strict=True)):
        image = draw_grid(ax, grid, label, labelled=index == 0)
    fig.suptitle(title, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="accuracy (%)", shrink=0.9)
    return save_figure(fig, path)


def finish_axes(ax: Any, xlabel: str, ylabel: str, title: str | None = None) -> None:
    """Labels, optional title, a light grid and the legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def score_vs_length(series: Mapping[str, Mapping[str, float]], title: str, path: Path,
                    threshold: float | None = None) -> Path:
    """One line per label (e.g. per tag or per RoPE setting); lengths on a log2 axis."""
    fig = new_figure(6.5, 3.8)
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
    finish_axes(ax, "context length (tokens)", "score (%)", title)
    return save_figure(fig, path)


def loss_by_position(series: Mapping[str, Mapping[str, float]], title: str, path: Path) -> Path:
    """Mean token loss per position bucket (bucket start on the x axis), one line per label."""
    fig = new_figure(6.5, 3.8)
    ax = fig.add_subplot()
    for label, losses in series.items():
        starts = sorted(losses, key=int)
        ax.plot([int(s) for s in starts], [losses[s] for s in starts], marker=".", label=label)
    finish_axes(ax, "token position (bucket start)", "loss (nats/token)", title)
    return save_figure(fig, path)
