"""The ``jury`` task: the evaluated model answers long-context questions, a panel of judges (PoLL) scores them.

Each answer is generated greedily; the panel (:mod:`toolkit.evals.jury_panel`) judges it and the item's
human-labelled answers, which measure the judges' agreement with people (not the model's score). Cells keep every
vote, so the summary is recomputed from them and a resumed run judges only new items. The judges' raw outputs go to
``<folder>/<suite>-<task>-judges.jsonl``. With ``length``, each context is hidden at ``depth`` inside filler text
up to that many tokens, so the same items test any context length. The report shows every judge and the panel.
The answers are the backend's greedy ``generate`` (:mod:`toolkit.evals.backend`); local judges are loaded on the
evaluated model's device.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Required

from pydantic import PositiveInt, with_config
from typing_extensions import TypedDict

from toolkit.data.needle import build_haystack
from toolkit.errors import UserError
from toolkit.evals.batching import batched_with_progress
from toolkit.evals.context import EvalContext
from toolkit.evals.haystack import filler_window, load_sentences
from toolkit.evals.judges import check_panel, make_judge
from toolkit.evals.jury_panel import (
    Cell,
    Usage,
    cost_text,
    item_key,
    judge_chunk,
    jury_summary,
    tokens_text,
    trouble_text,
)
from toolkit.evals.jury_spec import Judges, JuryItem, Pooling, read_items, resolve_judges
from toolkit.evals.results import SuiteResults
from toolkit.evals.specs import Depth, HaystackSpec, TaskBase
from toolkit.evals.stats import Rate
from toolkit.evals.task_type import Entry, TaskType
from toolkit.file_reading import SHAPE_CONFIG
from toolkit.formatting.blocks import Block, Heading, Paragraph, Table
from toolkit.formatting.numbers import fmt
from toolkit.recipe.yaml_files import resolve_relative
from toolkit.run_folder import Run

ASK = "\n\nAnswer the question using the text above, in one sentence.\nQuestion: {question}"
"""Follows the context (and filler) in the evaluated model's prompt; without a chat template, then ``\nAnswer:``."""


class JuryTask(TaskBase):
    """The evaluated model answers long-context questions (greedy); a panel of judges scores each answer."""

    type: Literal["jury"]
    data: str
    """JSONL of items (relative to the suite); see the module docstring."""
    judges: Judges
    pooling: Pooling = "max_vote"
    """``max_vote``: each judge says correct/incorrect, the majority decides (ties: incorrect), score = fraction
    correct. ``average``: each judge rates 1-5, the ratings are averaged, score = (mean - 1) / 4."""
    max_new_tokens: PositiveInt = 64
    """Longest answer of the evaluated model."""
    batch_size: PositiveInt = 4
    """Prompts the evaluated model answers per generate call."""
    chat: bool = False
    """Ask in the evaluated model's chat template (instruct models)."""
    length: PositiveInt | None = None
    """Make every prompt this long (the evaluated model's tokens, template included) by placing the item's context
    at ``depth`` inside ``haystack`` filler, as RULER's QA tasks do; ``None``: the context alone."""
    depth: Depth = 0.5
    """Fraction of the filler before the context (with ``length``)."""
    haystack: HaystackSpec = HaystackSpec()
    """Filler text (with ``length``)."""

    def resolve_paths(self, base: Path, where: str) -> None:
        super().resolve_paths(base, where)
        self.data = resolve_relative(self.data, base) or self.data
        resolve_judges(self.judges, base)
        if not Path(self.data).is_file():
            raise UserError(f"{where}.data: no such file {self.data}")
        read_items(Path(self.data), self.pooling)  # bad data fails before any model is loaded


@dataclass(frozen=True)
class _Context:
    """The item's context as the one "needle" of a haystack (``toolkit.data.needle.Statement``)."""

    sentence: str


@dataclass(frozen=True)
class _Ask:
    """The item's question at the end of the prompt (``toolkit.data.needle.Question``); no answer is forced."""

    ask: str
    question: str
    lead: str = ""
    answer: str = ""


def answer_prompt(task: JuryTask, ctx: EvalContext, item: JuryItem, sentences: tuple[str, ...] | None) -> list[int]:
    """The evaluated model's prompt: the context (inside filler up to ``task.length``), then the question."""
    ask = ASK.format(question=item.question)
    context, asked = _Context(f"\n\n{item.context.strip()}\n\n"), _Ask(ask, ask + "\nAnswer:")
    chat = ctx.chat_frame if task.chat else None
    if task.length is None:
        head = list(chat.head) if chat else list(ctx.tokens.bos)
        tail = list(ctx.tokens(ask)) + list(chat.turn) if chat else list(ctx.tokens(asked.question))
        return head + list(ctx.tokens(item.context)) + tail
    rng = random.Random(f"{task.seed}:{item.id}")
    try:
        return build_haystack(ctx.tokens, task.length, [context], [task.depth], asked, rng,
                              filler_window(sentences, rng, task.length), chat).input_ids
    except ValueError as exc:
        raise UserError(f"suite {ctx.suite}: task {task.key}: length: item {item.id}: {exc}") from None


@with_config(SHAPE_CONFIG)
class JuryJudge(Usage):
    """One judge of a finished jury entry (``jury_panel.jury_summary``): its model, usage and scores."""

    backend: str
    model: str
    score: float | None
    n: int
    human_kappa: float | None
    human_n: int


@with_config(SHAPE_CONFIG)
class JuryPanel(Usage):
    """The panel of a finished jury entry: its usage, score and agreement."""

    score: float | None
    n: int
    unjudged: int
    fleiss_kappa: float | None
    fleiss_n: int
    human_kappa: float | None
    human_n: int


@with_config(SHAPE_CONFIG)
class JuryEntry(TypedDict, total=False):
    """A finished jury entry (``jury_panel.jury_summary``) as its readers take it; ``correct`` with max voting,
    ``mean_rating`` with average pooling."""

    pooling: Required[Pooling]
    items: Required[int]
    n: Required[int]
    panel: Required[JuryPanel]
    judges: Required[dict[str, JuryJudge]]
    correct: int
    mean_rating: float | None
    raw_outputs: str


def run_jury(task: JuryTask, ctx: EvalContext, results: SuiteResults) -> dict[str, Any]:
    items = read_items(Path(task.data), task.pooling)
    recorded: dict[str, list[Cell]] = {}
    for cell in results.cells(task):
        recorded.setdefault(cell["key"], []).append(cell)
    raw_path = ctx.judges_log(task.key, fresh=not recorded)
    todo = [item for item in items if item_key(item) not in recorded]
    if todo:
        judges = [make_judge(spec, ctx.device) for spec in task.judges]  # each loaded once
        sentences = load_sentences(task.haystack) if task.length else None
        for chunk in batched_with_progress(todo, task.batch_size, f"{ctx.suite}/{task.key}", "question"):
            prompts = [answer_prompt(task, ctx, item, sentences) for item in chunk]
            answers = ctx.backend.generate(prompts, task.max_new_tokens)
            for cell in judge_chunk(task.pooling, judges, list(chunk), [a.strip() for a in answers], raw_path):
                recorded.setdefault(cell["key"], []).append(cell)
            results.record(task, [c for item in items for c in recorded.get(item_key(item), [])])
    cells = [c for item in items for c in recorded[item_key(item)]]
    summary = jury_summary(cells, task.judges, task.pooling)
    summary["raw_outputs"] = raw_path.name
    return results.record(task, cells, summary)


def jury_headline(entry: Entry) -> str | None:
    panel = entry.get("panel")
    if not panel:
        return None
    return (f"{entry['pooling']} over {panel['n']} answers ({panel['unjudged']} unjudged), Fleiss kappa "
            f"{fmt(panel['fleiss_kappa'])}, human kappa {fmt(panel['human_kappa'])}, {trouble_text(panel)}")


def _jury_row(name: str, stats: dict[str, Any], fleiss: str) -> list[str]:
    return [name, fmt(stats["score"], 2), str(stats["n"]), str(stats["calls"]), str(stats["failed"]),
            str(stats["unparsed"]), str(stats["attempts"]), fleiss,
            f"{fmt(stats['human_kappa'], 2)} n={stats['human_n']}",
            tokens_text(stats), fmt(stats["seconds"], 1), cost_text(stats)]


def jury_section(run: Run) -> list[Block]:
    blocks: list[Block] = []
    for suite, task in run.tasks("jury"):
        for tag, entry in run.found(suite, task):
            panel, judges = entry.get("panel"), entry.get("judges") or {}
            if not panel:
                continue
            rows = [_jury_row(f"{name} ({stats['backend']}: {stats['model']})", stats, "")
                    for name, stats in judges.items()]
            rows.append(_jury_row("panel", panel, f"{fmt(panel['fleiss_kappa'], 2)} n={panel['fleiss_n']}"))
            setting = ("max voting of True/False verdicts (ties: incorrect); score = fraction correct; Cohen's "
                       "kappa unweighted" if entry["pooling"] == "max_vote" else
                       "average pooling of 1-5 ratings; score = (mean - 1) / 4; Fleiss' kappa over the 5 ratings "
                       "as categories; Cohen's kappa quadratic-weighted, the panel's mean rounded half up")
            blocks += [Paragraph(f"{suite}/{task} at {tag}: {setting}. {panel['n']} of {entry['items']} answers "
                                 f"judged ({panel['unjudged']} unjudged: no judge gave a verdict); failed or "
                                 f"unparseable verdicts are left out of that answer's pooling. Raw outputs: "
                                 f"eval/{tag}/{entry.get('raw_outputs')}."),
                       Table(["judge", "score", "answers scored", "calls", "failed", "unparsed", "attempts",
                              "Fleiss kappa", "Cohen kappa vs humans", "tokens in/out", "seconds", "est. cost"], rows)]
    return [Heading("Jury (PoLL)"), *blocks] if blocks else []


def jury_rate(run: Run, tag: str, entry: Entry) -> Rate | None:
    """The panel's fraction correct under max voting, counted (``None`` for a mean rating, or results recorded
    without the count)."""
    if entry.get("pooling") == "average" or "correct" not in entry:
        return None
    return Rate.of(int(entry["correct"]), int(entry["n"]))


def jury_cell(run: Run, tag: str, entry: Entry) -> str:
    """The panel's score: fraction correct with its interval (max voting), or (mean rating - 1) / 4 next to the
    mean 1-5 rating (average); with the number of answers no judge rated."""
    unjudged = (entry.get("panel") or {}).get("unjudged")
    note = f" ({unjudged} unjudged)" if unjudged else ""
    if entry.get("pooling") == "average":
        return f"{fmt(entry['score'], 2)} (mean rating {fmt(entry.get('mean_rating'), 2)}/5) n={entry.get('n')}{note}"
    voted = jury_rate(run, tag, entry)
    return (voted.format() if voted else fmt(entry["score"], 2)) + note


TASK_TYPE = TaskType(JuryTask, run_jury, headline=jury_headline, section=jury_section, rank=60, score_rate=jury_rate,
                     score_cell=jury_cell, check=check_panel, entry=JuryEntry)
