"""What the ``lm_eval`` task (:mod:`toolkit.evals.lm_eval`) reads of lm-eval: its task index, and the metrics of its
output with the task's score."""

from __future__ import annotations

import numbers
from statistics import mean
from typing import Any

import numpy as np


def task_manager(tasks: list[str], include_path: str | None, metadata: dict[str, Any] | None = None):
    """lm-eval's TaskManager; indexes only ``include_path`` when it holds every task (seconds faster)."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False, metadata=metadata)
        if all(name in local.all_tasks for name in tasks):
            return local
    return TaskManager(include_path=include_path, metadata=metadata)


def summarize(output: dict[str, Any], metric: str | None) -> tuple[dict[str, dict[str, float]], float | None]:
    """Metrics per task (lm-eval names them ``metric,filter``; stderr dropped) and the mean main metric."""
    metrics: dict[str, dict[str, float]] = {}
    for name, values in output.get("results", {}).items():
        metrics[name] = {key: float(value) for key, value in values.items()
                         if "," in key and "_stderr" not in key and isinstance(value, numbers.Real)
                         and not isinstance(value, (bool, np.bool_))}
    mains = []
    for values in metrics.values():
        chosen = [v for k, v in values.items() if metric is None or k.split(",")[0] == metric]
        if chosen:
            mains.append(chosen[0])
    return metrics, (mean(mains) if mains else None)
