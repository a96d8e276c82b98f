"""RULER-style evaluation: generate each task's prompts at each length, decode greedily (the backend's ``generate``),
score by string match.

Score of a prompt: the fraction of expected answers present in the greedy output (RULER's string_match_all).
Scores average over samples, then over tasks at each length. Effective length follows RULER: the longest
tested length L such that the score at L and at every shorter tested length is at least the threshold. The report
shows the mean score by length with the threshold, and the effective length per tag.
"""

from __future__ import annotations

import random
from statistics import mean
from typing import Annotated, Any, ClassVar, Literal, Required, get_args

from pydantic import Field, PositiveInt, with_config
from typing_extensions import TypedDict

from toolkit.evals import plots
from toolkit.evals.batching import batch_size_for, batched
from toolkit.evals.context import EvalContext, sentence_tokens
from toolkit.evals.haystack import load_sentences
from toolkit.evals.results import SuiteResults
from toolkit.evals.ruler_data import ruler_sample, string_match_all
from toolkit.evals.specs import Distinct, HaystackSpec, TaskBase
from toolkit.evals.stats import RULER_THRESHOLD, Rate, effective_length, length_text
from toolkit.evals.task_type import CardMetrics, Entry, TaskType, complete_found
from toolkit.file_reading import SHAPE_CONFIG
from toolkit.formatting.blocks import Block, Heading, Image, Paragraph, Table
from toolkit.formatting.numbers import fmt, number, rounded
from toolkit.formatting.progress import progress_bar
from toolkit.run_folder import Run

Cell = dict[str, Any]
RulerName = Literal["niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe"]
RULER_TASKS: tuple[RulerName, ...] = get_args(RulerName)


class RulerTask(TaskBase):
    """RULER's synthetic tasks, generated locally at any length and scored by generation."""

    type: Literal["ruler"]
    cache_ignores: ClassVar[frozenset[str]] = frozenset({"tasks"})
    tasks: Annotated[list[RulerName], Field(min_length=1), Distinct] = Field(default_factory=lambda: list(RULER_TASKS))
    lengths: Annotated[list[PositiveInt], Field(min_length=1), Distinct]
    samples: PositiveInt = 4
    """Prompts per (task, length)."""
    threshold: float = Field(RULER_THRESHOLD, ge=0.0, le=1.0)
    """Effective length: the longest length whose score, and that of every shorter length, is at least this."""
    digits: int = Field(5, ge=1, le=12)
    haystack: HaystackSpec = HaystackSpec()
    batch_tokens: PositiveInt = 16384


def _task_cells(cells: list[Cell], task: RulerTask) -> list[Cell]:
    """The cells of ``task`` as it is now (its tasks, lengths and samples): cells recorded under other settings,
    which a resumed run keeps, are left out."""
    return [c for c in cells if c["task"] in task.tasks and c["length"] in task.lengths and c["sample"] < task.samples]


def ruler_summary(cells: list[Cell], task: RulerTask) -> dict[str, Any]:
    """Per-task and mean scores by length with their effective lengths, over the cells of ``task`` as it is now;
    ``n`` prompts scored and ``correct`` (``None`` when some prompt's score is a partial match)."""
    cells = _task_cells(cells, task)
    subtasks: dict[str, dict[str, Any]] = {}
    for name in task.tasks:
        by_length = {str(length): mean([c["score"] for c in cells if c["task"] == name and c["length"] == length])
                     for length in task.lengths}
        subtasks[name] = {"score": mean(by_length.values()), "scores_by_length": by_length,
                          "effective_length": effective_length(by_length, task.threshold)}
    by_length = {str(n): mean(sub["scores_by_length"][str(n)] for sub in subtasks.values()) for n in task.lengths}
    scores = [c["score"] for c in cells]
    correct = int(sum(scores)) if all(score in (0, 1) for score in scores) else None
    return {"score": mean(by_length.values()), "scores_by_length": by_length,
            "effective_length": effective_length(by_length, task.threshold), "threshold": task.threshold,
            "n": len(scores), "correct": correct, "subtasks": subtasks}


@with_config(SHAPE_CONFIG)
class RulerEntry(TypedDict, total=False):
    """A finished ruler entry (:func:`ruler_summary`) as its readers take it."""

    scores_by_length: Required[dict[str, float]]
    effective_length: int | None
    threshold: float
    n: int
    correct: int | None
    subtasks: dict[str, dict[str, Any]]


def run_ruler(task: RulerTask, ctx: EvalContext, results: SuiteResults) -> dict[str, Any]:
    sentences = load_sentences(task.haystack)
    cells = results.cells(task)
    seen = {(c["task"], c["length"], c["sample"]) for c in cells}
    groups = [(name, length, [s for s in range(task.samples) if (name, length, s) not in seen])
              for length in task.lengths for name in task.tasks]
    total = sum(len(todo) for *_, todo in groups)
    with progress_bar(total=total, desc=f"{ctx.suite}/{task.key}", unit="prompt") as bar:
        for name, length, todo in groups:
            for chunk in batched(todo, batch_size_for(length, task.batch_tokens)):
                samples = [ruler_sample(name, ctx.tokens, length, random.Random(f"{task.seed}:{name}:{length}:{s}"),
                                        sentences, task.digits) for s in chunk]
                outputs = ctx.backend.generate([s.input_ids for s in samples], max(s.max_new_tokens for s in samples))
                cells += [{"task": name, "length": length, "sample": s, "score": string_match_all(out, sample.answers),
                           "answers": sample.answers, "output": out}
                          for s, sample, out in zip(chunk, samples, outputs, strict=True)]
                results.record(task, cells)
                bar.update(len(chunk))
    summary = ruler_summary(cells, task)
    series = {"mean": summary["scores_by_length"]} | {n: s["scores_by_length"] for n, s in summary["subtasks"].items()}
    plots.score_vs_length(series, f"{ctx.model_name} [{ctx.folder.name}] {task.key}: effective length "
                          f"{length_text(summary['effective_length'])}", ctx.plot_path(task.key), task.threshold)
    return results.record(task, cells, summary)


def ruler_headline(entry: Entry) -> str:
    return f"effective length {length_text(entry.get('effective_length'))}"


def _per_length(entry: Entry) -> list[tuple[str, Any]]:
    return sorted(entry.get("scores_by_length", {}).items(), key=lambda item: int(item[0]))


def ruler_card(key: str, entry: Entry) -> CardMetrics:
    return {key: [("accuracy", "mean score", rounded(entry.get("score"))),
                  ("effective_length", "RULER effective length (tokens)", entry.get("effective_length"))]
            + [(f"accuracy@{length}", f"score at {length} tokens", rounded(v)) for length, v in _per_length(entry)]}


def ruler_detail(entry: Entry) -> str:
    lengths = ", ".join(f"{length}: {fmt(number(v))}" for length, v in _per_length(entry))
    return f"effective length {entry.get('effective_length') or '-'}; {lengths}"


def ruler_section(run: Run) -> list[Block]:
    blocks: list[Block] = []
    thresholds: set[float] = set()
    for suite, task in run.tasks("ruler"):
        found = complete_found(run, suite, task)
        if not found:
            continue
        threshold = found[-1][1].get("threshold")
        thresholds.add(RULER_THRESHOLD if (value := number(threshold)) is None else value)
        path = plots.score_vs_length({tag: e["scores_by_length"] for tag, e in found}, f"{suite}/{task}",
                                     run.folder / f"ruler-{suite}-{task}.png", threshold)
        blocks += [Image(path, f"RULER {suite}/{task}: mean score by length"),
                   Table(["tag", "effective length", "mean score"],
                         [[tag, fmt(e.get("effective_length")), fmt(e.get("score"))] for tag, e in found])]
    if not blocks:
        return []
    used = ", ".join(f"{value:.1%}" for value in sorted(thresholds))
    return [Heading("RULER"), Paragraph("Effective length: the longest length whose score, and every shorter length's, "
                                        f"is at least the threshold ({used}; RULER's is {RULER_THRESHOLD:.1%}, "
                                        "Llama-2-7B's score at 4K)."), *blocks]


def ruler_rate(run: Run, tag: str, entry: Entry) -> Rate | None:
    """The score as a fraction of the prompts behind it (``ruler_summary``'s ``n`` and ``correct``) where every
    prompt scored 0 or 1 (``None`` otherwise); the score alone for results recorded before the counts were kept."""
    n, correct = entry.get("n"), entry.get("correct")
    if not isinstance(n, int):
        return Rate(float(entry["score"]))
    return None if correct is None else Rate.of(correct, n)


def ruler_cell(run: Run, tag: str, entry: Entry) -> str:
    """The rate (:func:`ruler_rate`), or a score of partial matches (some prompt scored between 0 and 1) with the
    prompts behind it."""
    rate = ruler_rate(run, tag, entry)
    return rate.format() if rate is not None else f"{entry['score']:.2f} n={entry['n']} (partial matches)"


def check_ruler_prompts(task: RulerTask, tokenizer: Any) -> None:
    """With the tokenizer, before the model: the shortest length holds a prompt of every task."""
    sentences = load_sentences(task.haystack)
    for name in task.tasks:
        ruler_sample(name, sentence_tokens(tokenizer), min(task.lengths), random.Random(0), sentences, task.digits)


TASK_TYPE = TaskType(RulerTask, run_ruler, headline=ruler_headline, section=ruler_section, rank=20,
                     score_rate=ruler_rate, score_cell=ruler_cell, card_metrics=ruler_card, card_detail=ruler_detail,
                     check_prompts=check_ruler_prompts, entry=RulerEntry)
