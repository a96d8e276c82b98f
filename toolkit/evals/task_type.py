"""What a task type is: its settings, its runner, the shape of its results entry, and how its results are shown (the
one-line headline of ``toolkit eval``, its report section and score cell, its model-card metrics). Each built-in
type's module ends with its ``TASK_TYPE``; :mod:`toolkit.evals.registry` registers them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args, get_type_hints

from pydantic import with_config

from toolkit.evals.specs import TaskBase
from toolkit.file_reading import SHAPE_CONFIG
from toolkit.formatting.numbers import rounded

if TYPE_CHECKING:
    from toolkit.evals.context import EvalContext
    from toolkit.evals.results import SuiteResults
    from toolkit.evals.stats import Rate
    from toolkit.formatting.blocks import Block
    from toolkit.run_folder import Run

Entry = dict[str, Any]
"""One task's results as recorded in the suite JSON (``score``, ``complete``, ``identity``, ``cells``, ...)."""
CardMetrics = dict[str, list[tuple[str, str, Any]]]
"""{dataset name: [(metric type, readable metric name, value)]} for the model card's model-index."""
Runner = Callable[[Any, "EvalContext", "SuiteResults"], Entry]
Section = Callable[["Run"], list["Block"]]
ScoreCell = Callable[["Run", str, Entry], str]
ScoreRate = Callable[["Run", str, Entry], "Rate | None"]


def no_headline(entry: Entry) -> str | None:
    return None


def no_detail(entry: Entry) -> str:
    return ""


def complete_found(run: Run, suite: str, task: str) -> list[tuple[str, Entry]]:
    """(tag, entry) of every tag where ``suite``/``task`` finished: an interrupted task's partial entry (``complete:
    false``, cells only) is left out."""
    return [(tag, entry) for tag, entry in run.found(suite, task) if entry.get("complete")]


def not_cut_short(run: Run, suite: str, task: str) -> list[tuple[str, Entry]]:
    """(tag, entry) of every tag that has results for ``suite``/``task``, but an entry of an evaluation cut short
    (``complete: false``), which may lack its type's fields; one that does not say is kept."""
    return [(tag, entry) for tag, entry in run.found(suite, task) if entry.get("complete") is not False]


def score_metric(key: str, entry: Entry) -> CardMetrics:
    """The default card metric: the task's main score."""
    kind = entry.get("type")
    return {key: [(kind or "score", f"{kind} score", rounded(entry.get("score")))]}


def with_prefixed(shape: type, fields: type, *prefixes: str) -> type:
    """The entry shape ``shape`` (a TypedDict) with the fields of the TypedDict ``fields`` added, none required, once
    under each of ``prefixes``: for an entry that records another predictor's scores flat beside its own
    (``prior_log_loss``), so the names keep one owner. Configured ``SHAPE_CONFIG``, named as ``shape``."""
    added = {prefix + name: hint for prefix in prefixes for name, hint in get_type_hints(fields).items()}
    namespace = {"__annotations__": added, "__module__": shape.__module__, "__doc__": shape.__doc__}
    return with_config(SHAPE_CONFIG)(type(shape)(shape.__name__, (shape,), namespace, total=False))


@dataclass(frozen=True)
class TaskType:
    spec: type[TaskBase]
    """The settings: a :class:`TaskBase` subclass whose ``type`` field is ``Literal["<name>"]`` (its ``version``
    and ``cache_ignores`` make the cache identity)."""
    runner: Runner
    """Runs one task: ``(task, EvalContext, SuiteResults) -> entry`` (records via ``SuiteResults.record``)."""
    headline: Callable[[Entry], str | None] = no_headline
    """The figure shown after the score by ``toolkit eval``, e.g. ``effective length 512``."""
    section: Section | None = None
    """The report section of every task of this type: ``(Run) -> list[Block]``."""
    rank: int = 100
    """Where the section goes in the report (lower first)."""
    score_rate: ScoreRate | None = None
    """The main score as a fraction correct (with its counts where recorded; ``None`` where the score is not one):
    the table cell with its 95% interval and n (unless ``score_cell``), and the counts behind the intervals of two
    scores compared (the report's final - before, retention's final / before)."""
    score_cell: ScoreCell | None = None
    """The main score as a report table cell, where more than the rate is shown (a note, partial matches); ``None``:
    the rate (``score_rate``), else the score."""
    card_metrics: Callable[[str, Entry], CardMetrics] = score_metric
    """The model card's metrics of one task: ``(task key, entry) -> {dataset: [(type, name, value)]}``."""
    check: Callable[[Any], None] | None = None
    """What can be checked of one task before any model is loaded (a UserError when it fails), beyond its
    haystacks, which every type's are read then."""
    check_prompts: Callable[[Any, Any], None] | None = None
    """What can be checked of one task with the tokenizer, before the model is loaded: ``(task, tokenizer)``, a
    UserError when its prompts cannot be built (too short a length, no chat template)."""
    card_detail: Callable[[Entry], str] = no_detail
    """The "details" cell of the model card's results table, e.g. RULER's score per length."""
    entry: type | None = None
    """The shape of a finished entry (``complete`` not false): a pydantic TypedDict of the fields its headline,
    section, score cell, card and the verdict take from it, configured ``toolkit.file_reading.SHAPE_CONFIG`` (other
    keys kept, strict types); an entry cut short may lack them. Checked when a run is read for the report, verdict
    and card (:mod:`toolkit.evals.run_results`); ``None``: the fields every type shares only."""

    @property
    def name(self) -> str:
        return get_args(self.spec.model_fields["type"].annotation)[0]

    def run(self, task: TaskBase, ctx: EvalContext, results: SuiteResults) -> Entry:
        return self.runner(task, ctx, results)
