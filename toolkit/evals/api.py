"""Run suites on a model that is already loaded (the training runner calls this before and after each stage), or any
tasks on a backend (``export --check``: the needle grids in llama.cpp).

Each suite writes ``<folder>/<suite>.json`` (layout in :mod:`toolkit.evals.results`) plus its plots, and is
resumable: cells already recorded for the same weights are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from toolkit.errors import RunFailure
from toolkit.evals.backend import Backend
from toolkit.evals.context import EvalContext
from toolkit.evals.registry import headline, task_type
from toolkit.evals.results import SuiteResults
from toolkit.evals.specs import TaskBase
from toolkit.evals.suite import load_suite
from toolkit.evals.transformers_backend import TransformersBackend
from toolkit.model.loading import evaluating

log = logging.getLogger(__name__)


def _lengths(task: Any) -> list[int]:
    """The prompt lengths of ``task`` (for the log): its ``lengths`` and its one ``length`` (perplexity's documents,
    the jury's padded prompts); none for lm-eval's tasks, which size their own prompts."""
    one = getattr(task, "length", None)
    return [*(getattr(task, "lengths", None) or []), *([one] if isinstance(one, int) else [])]


def capped(task: Any, max_length: int | None) -> Any | None:
    """``task`` with its lengths above ``max_length`` left out; None when none is left, or when its one ``length``
    is above it."""
    if max_length is None:
        return task
    if isinstance(length := getattr(task, "length", None), int) and length > max_length:
        return None
    lengths = getattr(task, "lengths", None)
    if lengths is None:
        return task
    kept = [length for length in lengths if length <= max_length]
    return task.model_copy(update={"lengths": kept}) if kept else None


def results_file(folder: Path, suite: str) -> Path:
    """Where the suite ``suite``'s results are written in ``folder``."""
    return folder / f"{suite}.json"


def run_tasks(backend: Backend, tasks: Sequence[TaskBase], folder: Path, suite: str, tag: str, model_name: str,
              max_length: int | None = None) -> dict[str, Any]:
    """Run ``tasks`` as the suite ``suite`` with ``backend`` into ``<folder>/<suite>.json``; returns its results.
    ``max_length`` and the backend's own limit leave out prompt lengths above them."""
    results = SuiteResults(results_file(folder, suite), suite, tag, model_name, backend.fingerprint)
    ctx = EvalContext(backend, folder, suite, model_name)
    limit = min((n for n in (max_length, backend.max_length) if n is not None), default=None)
    for whole in tasks:
        if limit is not None and (above := [n for n in _lengths(whole) if n > limit]):
            log.warning("%s/%s %s: prompt length(s) %s left out (above %d tokens)", tag, suite, whole.key,
                        ", ".join(map(str, above)), limit)
        if (task := capped(whole, limit)) is None:
            continue
        try:
            entry = task_type(task.type).run(task, ctx, results)
        except torch.OutOfMemoryError:
            raise RunFailure(f"{tag}/{suite} {task.key}: out of memory while evaluating; what it finished is saved and "
                             "a rerun continues from there (train.resume=true for a run): lower the task's "
                             "batch_tokens or batch_size, or leave out its longest lengths") from None
        log.info("%s/%s %s (%s): %s", tag, suite, task.key, backend.name, headline(entry))
    return results.finish({task.key for task in tasks})


@torch.no_grad()
def run_suites_into(model, tokenizer, suite_paths: list[str], folder: Path, tag: str,
                    model_name: str, max_length: int | None = None) -> dict[str, dict[str, Any]]:
    """Run every suite on a transformers model into ``folder`` (``<folder>/<suite>.json``); returns {suite name:
    results dict}. ``max_length`` leaves out prompt lengths above it (a 32K model on a 128K suite, a CPU smoke run)."""
    suites = [load_suite(path) for path in suite_paths]  # every file is checked before anything runs
    with evaluating(model):
        backend = TransformersBackend(model, tokenizer)
        return {suite.name: run_tasks(backend, suite.tasks, folder, suite.name, tag, model_name, max_length)
                for suite in suites}


def run_suites(model, tokenizer, suite_paths: list[str], out_dir: Path, tag: str,
               model_name: str) -> dict[str, dict[str, Any]]:
    """Run suites on a loaded model; writes ``out_dir/<tag>/<suite>.json`` and returns the same dicts."""
    return run_suites_into(model, tokenizer, suite_paths, Path(out_dir) / tag, tag, model_name)

