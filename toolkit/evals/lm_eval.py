"""The ``lm_eval`` task: lm-eval on the already-loaded model, ``simple_evaluate(model=HFLM(pretrained=model, ...))``.

lm-eval's full output (its own JSON layout, minus per-sample logs) is saved to
``<out>/<tag>/lm_eval/<suite>.json`` (``<suite>-<task key>.json`` for a task given its own name); the
suite JSON gets ``metrics`` {task: {metric: float}}, ``n`` {task: documents scored} and ``score``, the mean
over tasks of ``metric`` (or of each task's first metric). lm-eval's task index and output are read by
:mod:`toolkit.evals.lmeval_bridge`. The report lists every metric per tag, fractions with their 95% Wilson interval.

It takes the transformers model (``EvalContext.model``), not the backend's requests: lm-eval brings its own ``LM``
(``HFLM``), which builds and answers every request type of lm-eval's tasks itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Required

from pydantic import AfterValidator, Field, NonNegativeInt, PositiveInt, PrivateAttr, with_config
from typing_extensions import TypedDict

from toolkit.data.tokens import bos_prefix
from toolkit.errors import UserError, reason
from toolkit.evals.context import EvalContext
from toolkit.evals.lmeval_bridge import (
    declared_metrics,
    main_metrics,
    summarize,
    task_datasets,
    task_manager,
    unimportable_code,
)
from toolkit.evals.results import SuiteResults, write_json
from toolkit.evals.specs import Distinct, TaskBase, file_digests
from toolkit.evals.stats import Rate, lm_eval_rates
from toolkit.evals.task_type import CardMetrics, Entry, TaskType, not_cut_short
from toolkit.file_reading import SHAPE_CONFIG
from toolkit.formatting.blocks import Block, Heading, Paragraph, Table
from toolkit.formatting.numbers import fmt, rounded
from toolkit.recipe.yaml_files import resolve_relative
from toolkit.run_folder import Run, eval_dir, read_json


def _documents_or_fraction(limit: float) -> float:
    """lm-eval reads a limit under 1 as a fraction and cuts any other to a whole number (0 runs every document)."""
    if not (0 < limit < 1 or (limit >= 1 and limit == int(limit))):
        raise ValueError(f"a whole number of documents or a fraction between 0 and 1, not {limit}")
    return int(limit) if limit >= 1 else limit


class LmEvalTask(TaskBase):
    """Tasks run through lm-eval on the loaded model (lm-eval's own tasks or ours in ``evals/lm_eval_tasks``)."""

    type: Literal["lm_eval"]
    version: ClassVar[int] = 2
    """2: the score leaves out groups' own rows and the lengths lm-eval's RULER did not run."""
    tasks: Annotated[list[str], Field(min_length=1), Distinct]
    include_path: str | None = None
    """Folder of extra task YAMLs (relative to the suite)."""
    num_fewshot: NonNegativeInt | None = None
    limit: Annotated[float, AfterValidator(_documents_or_fraction)] | None = None
    """Documents per task (a whole number), or a fraction of them (between 0 and 1); ``None`` runs all."""
    metadata: dict[str, Any] | None = None
    """Passed to the tasks, e.g. ``{max_seq_lengths: [4096, 8192]}`` for lm-eval's ``ruler``."""
    metric: str | None = None
    """Metric averaged into the task's score; ``None`` takes each lm-eval task's first metric."""
    batch_size: PositiveInt = 1
    max_length: PositiveInt | None = None
    """Context cap of lm-eval's HFLM; ``None`` lets HFLM read it from the model config."""
    _where: str = PrivateAttr("")
    """The task's place in its suite file (``evals/x.yaml: tasks[0]``), set as the suite is read."""

    def field(self, name: str) -> str:
        """Field ``name`` as a message names it: in the suite file (``evals/x.yaml: tasks[0].tasks``), or
        ``lm_eval task KEY: tasks`` for a task made in Python."""
        return f"{self._where}.{name}" if self._where else f"lm_eval task {self.key}: {name}"

    def read_files(self) -> dict[str, str]:
        """Also every file of ``include_path`` (its task YAMLs, their data and code)."""
        files = sorted(path for path in Path(self.include_path).rglob("*")
                       if "__pycache__" not in path.parts) if self.include_path else []
        return {**super().read_files(), **file_digests(files)}

    def resolve_paths(self, base: Path, where: str) -> None:
        super().resolve_paths(base, where)
        self._where = where
        if self.include_path:
            self.include_path = resolve_relative(self.include_path, base)
            if not Path(self.include_path or "").is_dir():
                raise UserError(f"{where}.include_path: no such folder {self.include_path}")


def evaluate(model, tokenizer, task: LmEvalTask) -> dict[str, Any]:
    """Run lm-eval on the loaded model; returns lm-eval's result dict (without samples)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    metadata = dict(task.metadata or {})
    tokenizer_name = getattr(tokenizer, "name_or_path", "")
    if metadata and tokenizer_name:
        metadata.setdefault("tokenizer", tokenizer_name)  # lm-eval's ruler sizes prompts with it
    manager = task_manager(task.tasks, task.include_path, metadata or None)
    _check_known(task, manager)
    device = str(next(model.parameters()).device)
    # BOS first where the tokenizer puts one in front of a text (Llama 3); lm-eval leaves it out unless asked
    lm = HFLM(pretrained=model, tokenizer=tokenizer, device=device, batch_size=task.batch_size,
              max_length=task.max_length, add_bos_token=bool(bos_prefix(tokenizer)))
    try:
        output = simple_evaluate(model=lm, tasks=list(task.tasks), num_fewshot=task.num_fewshot, limit=task.limit,
                                 task_manager=manager, log_samples=False, random_seed=task.seed)
    except ConnectionError as exc:  # a task that builds its own data out of reach (lm-eval's RULER: its essays)
        raise UserError(f"{task.field('tasks')}: its tasks build their data when they run, and it could not be "
                        f"reached: {reason(exc)}") from None
    if output is None:  # only non-zero ranks of a distributed run get None
        raise UserError("lm_eval: run evaluation in a single process")
    output.pop("samples", None)
    return output


def _check_known(task: LmEvalTask, manager: Any) -> None:
    unknown = [name for name in task.tasks if name not in manager.all_tasks]
    if unknown:
        raise UserError(f"{task.field('tasks')}: unknown lm-eval task(s) {', '.join(unknown)}"
                        f"{'' if task.include_path else ' (set include_path for local task folders)'}")


def check_lm_eval(task: LmEvalTask) -> None:
    """Before a model is loaded: every task name is one lm-eval knows (its own or under ``include_path``), the Python
    code its tasks name imports (lm-eval's RULER needs the ``lm-eval[ruler]`` extra), and every dataset its tasks load
    opens (a hub dataset reachable or cached, local files there; the data itself is fetched when the task runs; a task
    that builds its own data shows whether it can only then)."""
    from datasets import load_dataset_builder

    manager = task_manager(task.tasks, task.include_path)
    _check_known(task, manager)
    if (broken := unimportable_code(manager, task.tasks)) is not None:
        raise UserError(f"{task.field('tasks')}: the code of lm-eval task {broken[0]} does not import: {broken[1]}")
    for name, metrics in declared_metrics(manager, task.tasks).items():
        if task.metric is not None and task.metric not in metrics:
            raise UserError(f"{task.field('metric')}: lm-eval task {name} has no {task.metric!r} (its "
                            f"metrics: {', '.join(metrics)})")
    for dataset in task_datasets(manager, task.tasks):
        try:
            load_dataset_builder(dataset.path, dataset.name, **dataset.kwargs)
        except (OSError, ValueError) as exc:
            raise UserError(f"{task.field('tasks')}: dataset {dataset.path!r} of lm-eval task {dataset.task} cannot "
                            f"be opened: {reason(exc)}") from None


@with_config(SHAPE_CONFIG)
class LmEvalEntry(TypedDict, total=False):
    """A finished lm_eval entry (:func:`run_lm_eval`) as its readers take it: ``metrics`` {task: {metric: value}},
    ``n`` {task: documents scored}, lm-eval's own JSON and the task's settings (its ``metric``)."""

    metrics: Required[dict[str, dict[str, Any]]]
    n: dict[str, int | None]
    lm_eval_json: str
    identity: dict[str, Any]


def run_lm_eval(task: LmEvalTask, ctx: EvalContext, results: SuiteResults) -> dict[str, Any]:
    if (done := results.finished(task)) is not None:
        return done
    output = evaluate(ctx.model, ctx.tokenizer, task)
    raw = Path("lm_eval") / (f"{ctx.suite}.json" if task.key == "lm_eval" else f"{ctx.suite}-{task.key}.json")
    write_json(ctx.folder / raw, output)
    metrics, score = summarize(output, task.metric)
    n = {name: counts.get("effective") for name, counts in output.get("n-samples", {}).items()}  # documents scored
    return results.record(task, summary={"score": score, "metrics": metrics, "n": n, "lm_eval_json": raw.as_posix()})


def lm_eval_card(key: str, entry: Entry) -> CardMetrics:
    return {subtask: [(name.split(",")[0], name, rounded(value)) for name, value in metrics.items()
                      if "stderr" not in name and isinstance(value, (int, float))]
            for subtask, metrics in entry.get("metrics", {}).items()}


def lm_eval_counts(run: Run, tag: str, entry: Entry) -> dict[str, int]:
    """Documents scored per lm-eval task: recorded in the entry, else read from lm-eval's own JSON."""
    if isinstance(entry.get("n"), dict):
        return {task: n for task, n in entry["n"].items() if isinstance(n, int)}
    raw = read_json(eval_dir(run.folder, tag) / entry["lm_eval_json"]) if entry.get("lm_eval_json") else None
    samples = raw.get("n-samples", {}) if isinstance(raw, dict) else {}
    return {task: counts["effective"] for task, counts in samples.items()
            if isinstance(counts, dict) and isinstance(counts.get("effective"), int)}


def lm_eval_rate(run: Run, tag: str, entry: Entry) -> Rate | None:
    """The score of an lm_eval entry as a rate with its counts: only where it is one lm-eval task's main metric
    and that is a fraction correct (the score of several tasks is their unweighted mean, which no pooled count
    gives); ``None`` otherwise."""
    mains = main_metrics(entry.get("metrics") or {}, (entry.get("identity") or {}).get("metric"))
    if len(mains) != 1:
        return None
    [(task, (name, _))] = mains.items()
    return lm_eval_rates(entry, lm_eval_counts(run, tag, entry)).get((task, name))


def lm_eval_section(run: Run) -> list[Block]:
    tags, rows = run.tags, []
    for suite, task in run.tasks("lm_eval"):
        found = dict(not_cut_short(run, suite, task))
        rates = {tag: lm_eval_rates(e, lm_eval_counts(run, tag, e)) for tag, e in found.items()}
        pairs = dict.fromkeys((name, metric) for e in found.values()
                              for name, values in e["metrics"].items() for metric in values)
        for name, metric in pairs:
            cells = [rate.format() if (rate := rates.get(tag, {}).get((name, metric))) else
                     fmt(found.get(tag, {}).get("metrics", {}).get(name, {}).get(metric)) for tag in tags]
            rows.append([f"{suite} / {name}", metric, *cells])
    if not rows:
        return []
    return [Heading("lm-eval"), Paragraph("Fraction-correct metrics with their 95% Wilson interval and n (documents "
                                          "scored; unknown for results recorded before counts were kept)."),
            Table(["suite / task", "metric", *tags], rows)]


TASK_TYPE = TaskType(LmEvalTask, run_lm_eval, section=lm_eval_section, rank=50, score_rate=lm_eval_rate,
                     card_metrics=lm_eval_card, check=check_lm_eval, entry=LmEvalEntry)
