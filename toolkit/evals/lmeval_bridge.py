"""What the ``lm_eval`` task (:mod:`toolkit.evals.lm_eval`) reads of lm-eval: its task index, the datasets its tasks
load, and the metrics of its output with the task's score."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TaskDataset:
    """A dataset an lm-eval task loads, as lm-eval loads it: ``datasets.load_dataset(path, name, **kwargs)``."""

    task: str
    path: str
    name: str | None
    kwargs: dict[str, Any]


def task_datasets(manager, names: Iterable[str]) -> list[TaskDataset]:
    """The datasets ``names`` load (groups and tags expanded to their tasks), one per dataset path, from the task
    index's configs, without building a task (which downloads). Tasks that make their own data (``custom_dataset``,
    e.g. lm-eval's RULER) and Python-defined tasks are left out: only running them shows whether they can."""
    found: dict[str, TaskDataset] = {}
    for task, config in _task_configs(manager.task_index, names):
        path = config.get("dataset_path")
        if path and "custom_dataset" not in config and path not in found:
            kwargs = {key: value for key, value in (config.get("dataset_kwargs") or {}).items()
                      if key != "trust_remote_code"}  # as lm-eval drops it: datasets 4 runs no loading scripts
            found[path] = TaskDataset(task, path, config.get("dataset_name") or None, kwargs)
    return list(found.values())


def declared_metrics(manager, names: Iterable[str]) -> dict[str, list[str]]:
    """The metrics each of ``names``' tasks (groups and tags expanded) declares in its ``metric_list``, as lm-eval
    names them in its results (a ``!function module.name`` metric, indexed as its file's path: ``name``); a task
    that declares none (lm-eval then takes its output type's defaults) is left out."""
    return {task: [_metric_name(entry["metric"]) for entry in config["metric_list"]
                   if isinstance(entry.get("metric"), str)]
            for task, config in _task_configs(manager.task_index, names) if config.get("metric_list")}


def _metric_name(declared: str) -> str:
    return declared.rsplit(".", 1)[-1] if "/" in declared else declared


def unimportable_code(manager, names: Iterable[str]) -> tuple[str, str] | None:
    """The first of ``names``' tasks (groups and tags expanded) whose YAML names Python code (``!function``: a data
    builder, a filter, a metric) that does not import, with the reason; None when all of it imports. lm-eval imports
    that code only when it builds the task, after the model is loaded."""
    from lm_eval.tasks._yaml_loader import load_yaml

    read: set[str] = set()  # tasks of one file (a group's) need it read once
    for task, _config in _task_configs(manager.task_index, names):
        entry = manager.task_index.get(task)
        if entry is not None and entry.yaml_path and entry.yaml_path not in read:
            read.add(entry.yaml_path)
            try:
                load_yaml(entry.yaml_path, resolve_func=True)
            except ImportError as exc:
                return task, str(exc)
    return None


def _task_configs(index: dict[str, Any], names: Iterable[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for member in names:
        name = member if isinstance(member, str) else member.get("task")
        entry = index.get(name) if isinstance(name, str) else None
        if entry is None:
            if isinstance(member, dict):  # a task written out inside its group
                yield str(name), member
            continue
        config = entry.cfg or {}
        if entry.kind.name == "TAG":
            yield from _task_configs(index, [other for other, e in index.items() if name in e.tags])
        elif entry.kind.name == "GROUP":
            yield from _task_configs(index, config.get("task") or [])
        elif entry.kind.name == "TASK":
            yield name, config


def main_metrics(metrics: dict[str, dict[str, float]], metric: str | None) -> dict[str, tuple[str, float]]:
    """Each lm-eval task's main metric (name and value): the first named ``metric`` (any filter), or its first
    metric when ``metric`` is ``None``; tasks without one are left out."""
    mains: dict[str, tuple[str, float]] = {}
    for task, values in metrics.items():
        chosen = [(k, v) for k, v in values.items() if metric is None or k.split(",")[0] == metric]
        if chosen:
            mains[task] = chosen[0]
    return mains


def _measured(key: str, value: Any) -> bool:
    """A metric value lm-eval measured: a real number, not its stderr, and not the -1 that lm-eval's RULER tasks
    give a length they were not run at (their metrics are named by length: ``4096,none``)."""
    return ("," in key and "_stderr" not in key and isinstance(value, numbers.Real)
            and not isinstance(value, (bool, np.bool_)) and not (key.split(",")[0].isdigit() and value == -1))


def summarize(output: dict[str, Any], metric: str | None) -> tuple[dict[str, dict[str, float]], float | None]:
    """Metrics per task and group (lm-eval names them ``metric,filter``; stderr dropped, and lengths RULER did not
    run) and the score: the unweighted mean over tasks, groups left out (their rows combine their tasks'), of their
    main metric (:func:`main_metrics`)."""
    metrics = {name: {key: float(value) for key, value in values.items() if _measured(key, value)}
               for name, values in output.get("results", {}).items()}
    groups = output.get("group_subtasks", {})
    mains = [value for name, (_, value) in main_metrics(metrics, metric).items() if name not in groups]
    return metrics, (mean(mains) if mains else None)
