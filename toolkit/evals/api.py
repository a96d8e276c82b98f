"""Run suites on a model that is already loaded (the training runner calls this before and after each stage).

Each suite writes ``<folder>/<suite>.json`` (layout in :mod:`toolkit.evals.results`) plus its plots, and is
resumable: cells already recorded for the same weights are skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from toolkit.evals.context import EvalContext
from toolkit.evals.registry import task_type
from toolkit.evals.results import SuiteResults, model_fingerprint
from toolkit.evals.suite import load_suite
from toolkit.model.loading import evaluating

log = logging.getLogger(__name__)


def capped(task: Any, max_length: int | None) -> Any | None:
    """``task`` with its lengths above ``max_length`` left out; None when none is left."""
    lengths = getattr(task, "lengths", None)
    if max_length is None or lengths is None:
        return task
    kept = [length for length in lengths if length <= max_length]
    return task.model_copy(update={"lengths": kept}) if kept else None


@torch.no_grad()
def run_suites_into(model, tokenizer, suite_paths: list[str], folder: Path, tag: str,
                    model_name: str, max_length: int | None = None) -> dict[str, dict[str, Any]]:
    """Run every suite into ``folder`` (``<folder>/<suite>.json``); returns {suite name: results dict}.
    ``max_length`` leaves out prompt lengths above it (a 32K model on a 128K suite, a CPU smoke run)."""
    suites = [load_suite(path) for path in suite_paths]  # every file is checked before anything runs
    out: dict[str, dict[str, Any]] = {}
    with evaluating(model):
        fingerprint = model_fingerprint(model)
        for suite in suites:
            results = SuiteResults(folder / f"{suite.name}.json", suite.name, tag, model_name, fingerprint)
            ctx = EvalContext(model, tokenizer, folder, suite.name, model_name)
            for task in filter(None, (capped(task, max_length) for task in suite.tasks)):
                entry = task_type(task.type).run(task, ctx, results)
                log.info("%s/%s %s: score %s", tag, suite.name, task.key, entry.get("score"))
            out[suite.name] = results.finish({task.key for task in suite.tasks})
    return out


def run_suites(model, tokenizer, suite_paths: list[str], out_dir: Path, tag: str,
               model_name: str) -> dict[str, dict[str, Any]]:
    """Run suites on a loaded model; writes ``out_dir/<tag>/<suite>.json`` and returns the same dicts."""
    return run_suites_into(model, tokenizer, suite_paths, Path(out_dir) / tag, tag, model_name)

