"""What a task type is: its settings, its runner, its cache version, and how its results are shown (the one-line
headline of ``toolkit eval``, its report section, its model-card metrics). Registered in :mod:`toolkit.evals.registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any, TypeVar, get_args

from toolkit.evals.specs import TaskBase
from toolkit.report.fmt import rounded

if TYPE_CHECKING:
    from toolkit.evals.context import EvalContext
    from toolkit.evals.results import SuiteResults
    from toolkit.report.render import Block
    from toolkit.run_folder import Run

Entry = dict[str, Any]
"""One task's results as recorded in the suite JSON (``score``, ``complete``, ``identity``, ``cells``, ...)."""
CardMetrics = dict[str, list[tuple[str, str, Any]]]
"""{dataset name: [(metric type, readable metric name, value)]} for the model card's model-index."""
Runner = Callable[[Any, "EvalContext", "SuiteResults"], Entry]
Section = Callable[["Run"], list["Block"]]
ScoreCell = Callable[["Run", str, Entry], str]
T = TypeVar("T")


def resolve(ref: T | str) -> T:
    """A ``"module:name"`` reference imported now (kept as a string so heavy modules load only when used)."""
    if not isinstance(ref, str):
        return ref
    module, _, name = ref.partition(":")
    return getattr(import_module(module), name)


def no_headline(entry: Entry) -> str | None:
    return None


def no_detail(entry: Entry) -> str:
    return ""


def score_metric(key: str, entry: Entry) -> CardMetrics:
    """The default card metric: the task's main score."""
    kind = entry.get("type")
    return {key: [(kind or "score", f"{kind} score", rounded(entry.get("score")))]}


@dataclass(frozen=True)
class TaskType:
    spec: type[TaskBase]
    """The settings: a :class:`TaskBase` subclass whose ``type`` field is ``Literal["<name>"]``."""
    runner: Runner | str
    """Runs one task: ``(task, EvalContext, SuiteResults) -> entry`` (records via ``SuiteResults.record``)."""
    version: int = 1
    """Bump it when the prompts, data or scoring change: results of another version are never reused."""
    cache_ignores: frozenset[str] = frozenset()
    """Settings that key the recorded cells rather than change them (beyond lengths, depths, samples, ...)."""
    headline: Callable[[Entry], str | None] = no_headline
    """The figure shown after the score by ``toolkit eval``, e.g. ``effective length 512``."""
    section: Section | str | None = None
    """The report section of every task of this type: ``(Run) -> list[Block]``."""
    rank: int = 100
    """Where the section goes in the report (lower first)."""
    score_cell: ScoreCell | str | None = None
    """The main score as a report table cell, with its 95% interval and n where counted (``None``: the score)."""
    card_metrics: Callable[[str, Entry], CardMetrics] = score_metric
    """The model card's metrics of one task: ``(task key, entry) -> {dataset: [(type, name, value)]}``."""
    card_detail: Callable[[Entry], str] = no_detail
    """The "details" cell of the model card's results table, e.g. RULER's score per length."""

    @property
    def name(self) -> str:
        return get_args(self.spec.model_fields["type"].annotation)[0]

    def run(self, task: TaskBase, ctx: EvalContext, results: SuiteResults) -> Entry:
        return resolve(self.runner)(task, ctx, results)

    def report_section(self) -> Section | None:
        return None if self.section is None else resolve(self.section)

    def report_cell(self) -> ScoreCell | None:
        return None if self.score_cell is None else resolve(self.score_cell)
