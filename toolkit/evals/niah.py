"""Needle in a haystack over a depth x length grid, in the same task format the tiny model trains on.

Each cell (length, depth, sample) is one prompt from ``toolkit.data.needle.build_haystack`` with
``num_needles`` needles (the first is asked, placed at ``depth``; the others are distractors at random
depths), scored by exact match of the asked value under greedy decoding: the backend's ``greedy_matches``
(transformers: teacher-forced, one forward pass per batch, see :func:`toolkit.evals.scoring.greedy_matches`). Prompts
of one length are batched. The grid serves ``rope_compare`` too, and ``export --check`` runs this runner with the
llama.cpp backend. The report shows the grids as heatmaps before and after extension, with accuracy by length (95%
Wilson intervals).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from statistics import mean
from typing import Any, Literal, Required

from pydantic import with_config
from typing_extensions import TypedDict

from toolkit.data.needle import ChatFrame, Haystack, SentenceTokens, TooShort, build_haystack, make_needles
from toolkit.errors import UserError
from toolkit.evals.backend import AnswerRequest
from toolkit.evals.batching import batch_size_for, batched
from toolkit.evals.context import EvalContext, chat_frame, sentence_tokens
from toolkit.evals.haystack import filler_window, load_sentences
from toolkit.evals.plots import niah_heatmap, niah_heatmaps
from toolkit.evals.results import SuiteResults
from toolkit.evals.specs import NeedleGrid
from toolkit.evals.stats import Rate, common_n, niah_overall, niah_rates
from toolkit.evals.task_type import CardMetrics, Entry, TaskType
from toolkit.file_reading import SHAPE_CONFIG
from toolkit.formatting.blocks import Block, Heading, Image, Paragraph, Table
from toolkit.formatting.numbers import fmt, number, rounded
from toolkit.formatting.progress import progress_bar
from toolkit.run_folder import Run

Cell = dict[str, Any]


class NiahTask(NeedleGrid):
    """Needle-in-a-haystack: one needle asked per prompt, over a grid of lengths and depths."""

    type: Literal["niah"]


def needle_prompt(task: NeedleGrid, tokens: SentenceTokens, chat: ChatFrame | None,
                  sentences: tuple[str, ...] | None, length: int, depth: float, sample: int) -> Haystack:
    """The prompt of one cell; deterministic in (seed, length, depth, sample) so a resumed sweep matches."""
    rng = random.Random(f"{task.seed}:{length}:{depth}:{sample}")
    needles = make_needles(rng, task.num_needles, task.digits)
    depths = [depth] + [rng.random() for _ in needles[1:]]
    try:
        return build_haystack(tokens, length, needles, depths, needles[0], rng, filler_window(sentences, rng, length),
                              chat)
    except TooShort as exc:
        raise UserError(f"{task.type} task {task.key}: length {length} is too short for its needles and question "
                        f"({exc.needed} tokens)") from None


def check_needle_prompts(task: NeedleGrid, tokenizer: Any) -> None:
    """With the tokenizer, before the model: a chat task's template is there and the shortest length holds the
    needles and question."""
    chat = chat_frame(tokenizer, f"{task.type} task {task.key}") if task.chat else None
    needle_prompt(task, sentence_tokens(tokenizer), chat, load_sentences(task.haystack), min(task.lengths),
                  task.depths[0], 0)


def pending_cells(task: NeedleGrid, done: list[Cell]) -> list[tuple[int, float, int]]:
    """(length, depth, sample) of every cell of the grid not in ``done``, length by length."""
    seen = {(c["length"], c["depth"], c["sample"]) for c in done}
    return [(length, depth, sample) for length in task.lengths for depth in task.depths
            for sample in range(task.samples) if (length, depth, sample) not in seen]


def score_grid(task: NeedleGrid, ctx: EvalContext, done: list[Cell], save: Callable[[list[Cell]], object],
               label: str = "") -> list[Cell]:
    """All cells of the grid: those in ``done`` are kept, the rest computed batch by batch (saved each time)."""
    sentences = load_sentences(task.haystack)
    chat = ctx.chat_frame if task.chat else None
    cells = list(done)
    pending = pending_cells(task, done)
    with progress_bar(total=len(pending), desc=f"{ctx.suite}/{task.key}{label}", unit="prompt") as bar:
        for length in task.lengths:
            todo = [cell for cell in pending if cell[0] == length]
            for chunk in batched(todo, batch_size_for(length, task.batch_tokens)):
                stacks = [needle_prompt(task, ctx.tokens, chat, sentences, *cell) for cell in chunk]
                correct = ctx.backend.greedy_matches([AnswerRequest(h.input_ids, h.answer_ids) for h in stacks])
                cells += [{"length": length, "depth": depth, "sample": sample, "correct": ok,
                           "tokens": len(h.input_ids), "needle_position": h.needle_positions[0]}
                          for (length, depth, sample), h, ok in zip(chunk, stacks, correct, strict=True)]
                save(cells)
                bar.update(len(chunk))
    return cells


def grid_summary(cells: list[Cell], task: NeedleGrid) -> dict[str, Any]:
    """``grid`` {length: {depth: accuracy}}, ``scores_by_length``, and ``mean`` (= ``score``) over the grid of
    ``task`` as it is now (cells of other lengths, depths or samples, which a resumed run keeps, are left out); the
    counts behind them: ``n_by_length``/``correct_by_length`` (prompts per length) and ``n``/``correct``."""
    grid: dict[str, dict[str, float]] = {}
    n_by_length: dict[str, int] = {}
    correct_by_length: dict[str, int] = {}
    for length in task.lengths:
        grid[str(length)] = {}
        n_by_length[str(length)] = correct_by_length[str(length)] = 0
        for depth in task.depths:
            hits = [c["correct"] for c in cells
                    if c["length"] == length and c["depth"] == depth and c["sample"] < task.samples]
            grid[str(length)][str(depth)] = float(mean(hits)) if hits else 0.0
            n_by_length[str(length)] += len(hits)
            correct_by_length[str(length)] += sum(map(bool, hits))
    by_length = {length: mean(row.values()) for length, row in grid.items()}
    overall = mean(by_length.values())
    return {"score": overall, "mean": overall, "grid": grid, "scores_by_length": by_length,
            "n_by_length": n_by_length, "correct_by_length": correct_by_length,
            "n": sum(n_by_length.values()), "correct": sum(correct_by_length.values())}


@with_config(SHAPE_CONFIG)
class NiahEntry(TypedDict, total=False):
    """A finished niah entry (:func:`grid_summary`) as its readers take it; the counts by length are shared."""

    grid: Required[dict[str, dict[str, float]]]
    mean: Required[float]
    n: int
    correct: int


def run_niah(task: NiahTask, ctx: EvalContext, results: SuiteResults) -> dict[str, Any]:
    cells = score_grid(task, ctx, results.cells(task), lambda cells: results.record(task, cells))
    summary = grid_summary(cells, task)
    niah_heatmap(summary["grid"], f"{ctx.model_name} [{ctx.folder.name}] {task.key}", ctx.plot_path(task.key))
    return results.record(task, cells, summary)


def niah_card(key: str, entry: Entry) -> CardMetrics:
    return {key: [("accuracy", "needle grid mean", rounded(entry.get("mean", entry.get("score"))))]}


def niah_detail(entry: Entry) -> str:
    return f"grid mean {fmt(number(entry.get('mean')))} over {len(entry.get('grid', {}))} lengths"


def _all_zero(entry: Entry) -> bool:
    return not any(value for row in entry.get("grid", {}).values() for value in row.values())


def heatmap_panels(run: Run, found: list[tuple[str, Entry]]) -> list[tuple[str, Entry]]:
    """The grids drawn side by side: before extension and final, plus the starting model unless it scores 0
    everywhere (an untrained base)."""
    if not found:
        return []
    final, start = found[-1][0], found[0][0]
    keep = {run.reference, final} | ({start} if not _all_zero(found[0][1]) else set())
    return [(tag, entry) for tag, entry in found if tag in keep]


def by_length_table(rows: list[tuple[str, dict[int, Rate]]]) -> tuple[Table, str]:
    """Accuracy by length, a row per label, and how many prompts each cell counts (said once when uniform)."""
    lengths = sorted({length for _, rates in rows for length in rates})
    n = common_n(rates for _, rates in rows)
    table = Table(["model", *map(str, lengths)],
                  [[label, *(rates[k].format(with_n=n is None) if k in rates else "-" for k in lengths)]
                   for label, rates in rows])
    return table, (f"n={n} prompts per length" if n is not None else "n per cell")


def niah_section(run: Run) -> list[Block]:
    blocks: list[Block] = []
    for suite, task in run.tasks("niah"):
        found = [(tag, entry) for tag, entry in run.found(suite, task) if entry.get("grid")]
        panels = heatmap_panels(run, found)
        if not panels:
            continue
        roles = {found[0][0]: "start", run.reference: "before extension", found[-1][0]: "final"}
        titles = [f"{roles.get(tag, tag)}: {tag}\nmean {niah_overall(entry) or Rate(entry['mean'])}"
                  for tag, entry in panels]
        path = niah_heatmaps([(title, entry["grid"]) for title, (_, entry) in zip(titles, panels, strict=True)],
                             f"{suite}/{task}: accuracy (%) by needle depth and context length",
                             run.folder / f"niah-{suite}-{task}.png")
        table, n_text = by_length_table([(tag, niah_rates(entry)) for tag, entry in found])
        blocks += [Image(path, f"needle in a haystack {suite}/{task}: {', '.join(tag for tag, _ in panels)}"),
                   Paragraph(f"{suite}/{task}: accuracy by length with 95% Wilson intervals, {n_text}."), table]
    return [Heading("Needle in a haystack"), *blocks] if blocks else []


def niah_rate(run: Run, tag: str, entry: Entry) -> Rate | None:
    return niah_overall(entry)


TASK_TYPE = TaskType(NiahTask, run_niah, section=niah_section, rank=10, score_rate=niah_rate, card_metrics=niah_card,
                     card_detail=niah_detail, check_prompts=check_needle_prompts, entry=NiahEntry)
