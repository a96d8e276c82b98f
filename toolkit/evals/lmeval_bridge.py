"""lm-eval on the already-loaded model: ``simple_evaluate(model=HFLM(pretrained=model, tokenizer=...))``.

lm-eval's full output (its own JSON layout, minus per-sample logs) is saved to
``<out>/<tag>/lm_eval/<suite>.json`` (``<suite>-<task key>.json`` for a task given its own name); the
suite JSON gets ``metrics`` {task: {metric: float}}, ``n`` {task: documents scored} and ``score``, the mean
over tasks of ``metric`` (or of each task's first metric).
"""

from __future__ import annotations

import numbers
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np

from toolkit.data.tokens import bos_prefix
from toolkit.errors import UserError
from toolkit.evals.context import EvalContext
from toolkit.evals.results import SuiteResults, write_json
from toolkit.evals.specs import LmEvalTask


def task_manager(tasks: list[str], include_path: str | None, metadata: dict[str, Any] | None = None):
    """lm-eval's TaskManager; indexes only ``include_path`` when it holds every task (seconds faster)."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False, metadata=metadata)
        if all(name in local.all_tasks for name in tasks):
            return local
    return TaskManager(include_path=include_path, metadata=metadata)


def evaluate(model, tokenizer, task: LmEvalTask) -> dict[str, Any]:
    """Run lm-eval on the loaded model; returns lm-eval's result dict (without samples)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    metadata = dict(task.metadata or {})
    tokenizer_name = getattr(tokenizer, "name_or_path", "")
    if metadata and tokenizer_name:
        metadata.setdefault("tokenizer", tokenizer_name)  # lm-eval's ruler sizes prompts with it
    manager = task_manager(task.tasks, task.include_path, metadata or None)
    unknown = [name for name in task.tasks if name not in manager.all_tasks]
    if unknown:
        raise UserError(f"lm_eval task {task.key}: unknown lm-eval task(s) {', '.join(unknown)}"
                        f"{'' if task.include_path else ' (set include_path for local task folders)'}")
    device = str(next(model.parameters()).device)
    # BOS first where the tokenizer puts one in front of a text (Llama 3); lm-eval leaves it out unless asked
    lm = HFLM(pretrained=model, tokenizer=tokenizer, device=device, batch_size=task.batch_size,
              max_length=task.max_length, add_bos_token=bool(bos_prefix(tokenizer)))
    output = simple_evaluate(model=lm, tasks=list(task.tasks), num_fewshot=task.num_fewshot, limit=task.limit,
                             task_manager=manager, log_samples=False, random_seed=task.seed)
    if output is None:  # only non-zero ranks of a distributed run get None
        raise UserError("lm_eval: run evaluation in a single process")
    output.pop("samples", None)
    return output


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


def run_lm_eval(task: LmEvalTask, ctx: EvalContext, results: SuiteResults) -> dict[str, Any]:
    if (done := results.finished(task)) is not None:
        return done
    output = evaluate(ctx.model, ctx.tokenizer, task)
    raw = Path("lm_eval") / (f"{ctx.suite}.json" if task.key == "lm_eval" else f"{ctx.suite}-{task.key}.json")
    write_json(ctx.folder / raw, output)
    metrics, score = summarize(output, task.metric)
    n = {name: counts.get("effective") for name, counts in output.get("n-samples", {}).items()}  # documents scored
    return results.record(task, summary={"score": score, "metrics": metrics, "n": n, "lm_eval_json": raw.as_posix()})
