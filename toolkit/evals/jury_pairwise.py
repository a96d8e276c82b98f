"""The ``jury_pairwise`` task: a panel of judges (PoLL) says which of two answers people preferred, on Chatbot Arena
rows with human labels, scored as the fine-tuned classifier is (``preference``) on the same rows.

The rows are read by :func:`toolkit.data.arena.read_labelled_arena` (the competition's CSV or Parquet, with the
winner columns); the judges' prompt, votes and pooling are in :mod:`toolkit.evals.jury_pairwise_panel`, the scores in
:mod:`toolkit.evals.jury_pairwise_scores`. The evaluated model plays no part: run this task in the suite of the
``preference`` task so both are scored at the same tag, and the report shows them side by side with the prior
(:mod:`toolkit.evals.jury_pairwise_table`). Cells keep every vote, so a resumed run judges only new rows; the
judges' raw outputs go to ``<folder>/<suite>-<task>-judges.jsonl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, NotRequired, Required

from pydantic import PositiveFloat, PositiveInt, with_config
from typing_extensions import TypedDict

from toolkit.data.arena import read_labelled_arena
from toolkit.evals.batching import batched_with_progress
from toolkit.evals.context import EvalContext
from toolkit.evals.judges import check_panel, make_judge
from toolkit.evals.jury_pairwise_panel import judge_rows, row_key
from toolkit.evals.jury_pairwise_scores import Scores, pairwise_summary, prior_summary
from toolkit.evals.jury_pairwise_table import side_by_side_section
from toolkit.evals.jury_panel import Cell, Usage, cost_text, tokens_text, trouble_text
from toolkit.evals.jury_spec import Judges, resolve_judges
from toolkit.evals.preference_stats import prior_probs
from toolkit.evals.results import SuiteResults
from toolkit.evals.specs import TaskBase
from toolkit.evals.stats import Rate
from toolkit.evals.task_type import CardMetrics, Entry, TaskType
from toolkit.file_reading import SHAPE_CONFIG
from toolkit.formatting.numbers import fmt
from toolkit.recipe.yaml_files import resolve_relative
from toolkit.run_folder import Run

RECORD_EVERY = 16
"""Rows judged between two saves of the results (an interrupted run loses at most these)."""


JURY_LABELS = "the jury is scored against human labels"
"""What needs the winner columns, in the message of a file without them."""


class JuryPairwiseTask(TaskBase):
    """A panel of judges says A, B or tie on human-labelled Chatbot Arena rows; their votes pooled into
    probabilities are scored against the labels."""

    type: Literal["jury_pairwise"]
    data: str
    """Arena CSV or Parquet with the winner columns (relative to the suite)."""
    judges: Judges
    swap: bool = True
    """Also show every row with A and B exchanged (twice the calls): position bias cancels in the pooled
    probabilities, and the results say how consistent the judges are (``swap_consistency``, 0 = perfectly)."""
    smoothing: PositiveFloat = 1.0
    """Added to every class's vote count before the shares are taken (1: Laplace); see the panel module."""
    bad_rows: Literal["error", "skip"] = "error"
    """A malformed row stops the suite naming its line (``error``) or is skipped and counted (``skip``)."""
    prior_data: str | None = None
    """Training rows (arena CSV or Parquet, relative to the suite) whose label frequencies are the baseline scored
    beside the jury; ``None``: no prior."""
    limit: PositiveInt | None = None
    """Judge only the first rows of ``data`` (cost control); ``None``: all."""
    cache_ignores: ClassVar[frozenset[str]] = frozenset({"smoothing", "bad_rows", "prior_data", "limit"})

    def resolve_paths(self, base: Path, where: str) -> None:
        super().resolve_paths(base, where)
        self.data = resolve_relative(self.data, base) or self.data
        self.prior_data = resolve_relative(self.prior_data, base)
        resolve_judges(self.judges, base)
        # bad data fails before any model is loaded
        read_labelled_arena(self.data, self.bad_rows, f"{where}.data", JURY_LABELS)
        if self.prior_data is not None:
            read_labelled_arena(self.prior_data, self.bad_rows, f"{where}.prior_data", JURY_LABELS)


@with_config(SHAPE_CONFIG)
class PairwiseJudge(Usage, Scores):
    """One judge of a finished jury_pairwise entry (``jury_pairwise_scores.pairwise_summary``)."""

    backend: str
    model: str


@with_config(SHAPE_CONFIG)
class PairwisePanel(Usage, Scores):
    """The panel of a finished jury_pairwise entry; ``swap_consistency`` with ``swap``."""

    n: int
    swap_consistency: NotRequired[float | None]


@with_config(SHAPE_CONFIG)
class JuryPairwiseEntry(TypedDict, total=False):
    """A finished jury_pairwise entry as its readers take it (``prior`` with ``prior_data``)."""

    n: Required[int]
    correct: Required[int]
    panel: Required[PairwisePanel]
    judges: Required[dict[str, PairwiseJudge]]
    prior: Scores


def run_jury_pairwise(task: JuryPairwiseTask, ctx: EvalContext, results: SuiteResults) -> dict[str, Any]:
    rows, _, skipped = read_labelled_arena(task.data, task.bad_rows, f"suite {ctx.suite}: task {task.key}: data",
                                           JURY_LABELS)
    rows = rows[:task.limit]
    recorded: dict[str, Cell] = {cell["key"]: cell for cell in results.cells(task)}
    raw_path = ctx.judges_log(task.key, fresh=not recorded)
    todo = [row for row in rows if row_key(row) not in recorded]
    if todo:
        judges = [make_judge(spec, ctx.device) for spec in task.judges]  # each loaded once
        for chunk in batched_with_progress(todo, RECORD_EVERY, f"{ctx.suite}/{task.key}", "row"):
            recorded.update((cell["key"], cell) for cell in judge_rows(judges, chunk, task.swap, raw_path))
            results.record(task, [recorded[key] for row in rows if (key := row_key(row)) in recorded])
    cells = [recorded[row_key(row)] for row in rows]
    summary = pairwise_summary(cells, task.judges, task.swap, task.smoothing)
    summary.update(rows=len(rows), bad_rows=skipped, raw_outputs=raw_path.name)
    if task.prior_data is not None:
        _, winners, _ = read_labelled_arena(task.prior_data, task.bad_rows,
                                            f"suite {ctx.suite}: task {task.key}: prior_data", JURY_LABELS)
        summary["prior"] = prior_summary(prior_probs(winners), [int(cell["human"]) for cell in cells])
    return results.record(task, cells, summary)


def jury_pairwise_headline(entry: Entry) -> str | None:
    panel = entry.get("panel")
    if not panel:
        return None
    prior = f" (prior {fmt(entry['prior']['log_loss'])})" if entry.get("prior") else ""
    swap = f", swap consistency {fmt(panel['swap_consistency'])}" if "swap_consistency" in panel else ""
    return (f"panel of {len(entry['judges'])} over {panel['n']} rows: log loss {fmt(panel['log_loss'])}{prior}, "
            f"kappa {fmt(panel['kappa'])}{swap}, {trouble_text(panel)}, {tokens_text(panel)} tokens, "
            f"{cost_text(panel)}")


def jury_pairwise_rate(run: Run, tag: str, entry: Entry) -> Rate:
    """The panel's accuracy (its most probable class against the human label), counted."""
    return Rate.of(int(entry["correct"]), int(entry["n"]))


def no_card_metrics(key: str, entry: Entry) -> CardMetrics:
    """None in the model-index: the panel's accuracy measures the judges, not the evaluated model."""
    return {}


def jury_pairwise_detail(entry: Entry) -> str:
    return "the judges' accuracy on human preferences, not this model's"


TASK_TYPE = TaskType(JuryPairwiseTask, run_jury_pairwise, headline=jury_pairwise_headline,
                     section=side_by_side_section, rank=62, score_rate=jury_pairwise_rate,
                     card_metrics=no_card_metrics, card_detail=jury_pairwise_detail, check=check_panel,
                     entry=JuryPairwiseEntry)
