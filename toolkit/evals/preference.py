"""The ``preference`` task: predict which of two responses a person preferred (Chatbot Arena format), from the
model's probabilities of three label tokens at the answer position, each comparison asked in both orders and
averaged (:mod:`toolkit.evals.preference_model`).

Reports, over n rows, the competition's log loss and the accuracy with 95% intervals, the calibration error and
Cohen's kappa of the most probable class with its bootstrap interval (the fields of
:func:`toolkit.evals.jury_pairwise_scores.scores_of`, as the jury's rows have them), next to the baseline that
predicts the class frequencies of ``prior`` (the training file) for every row, and the swap consistency of the two
orders. The score is the accuracy. It asks the transformers model (``ctx.model``) directly, through the one call
``predict`` shares, as no backend request gives label-token probabilities yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Required

from pydantic import PositiveInt

from toolkit.data.arena import read_labelled_arena
from toolkit.evals.context import EvalContext
from toolkit.evals.jury_pairwise_scores import Scores, scores_of
from toolkit.evals.preference_model import check_rows_fit, predict_rows
from toolkit.evals.preference_stats import prior_probs, swap_consistency
from toolkit.evals.results import SuiteResults
from toolkit.evals.specs import TaskBase, file_digests
from toolkit.evals.stats import Rate
from toolkit.evals.task_type import Entry, TaskType, with_prefixed
from toolkit.formatting.blocks import Block, Heading, Paragraph, Table
from toolkit.formatting.numbers import fmt, score_with_interval
from toolkit.recipe.data_spec import ARENA_LABELS
from toolkit.recipe.yaml_files import resolve_relative
from toolkit.run_folder import Run

PREFERENCE_LABELS = "the preference task is scored against human labels"
"""What needs the winner columns, in the message of a file without them."""
PRIOR, FIRST_ORDER = "prior_", "first_order_"
"""The prefixes of the class prior's scores and of the classifier's on the order as given, beside its own."""


class PreferenceTask(TaskBase):
    """Three-way human preference (A, B, tie) on held-out comparisons, scored against the class-prior baseline."""

    type: Literal["preference"]
    data: str
    """Held-out comparisons with winners: the competition's CSV or Parquet columns (relative to the suite)."""
    prior: str | None = None
    """The training file whose class frequencies make the baseline; ``None``: the held-out file's own (a baseline
    that has seen the answers' frequencies)."""
    label_tokens: tuple[str, str, str] = ARENA_LABELS
    """The answer tokens for A, B and tie, as the model was trained (the recipe source's ``label_tokens``)."""
    truncate_tokens: PositiveInt = 1024
    """Most tokens of one comparison with its answer, cut as in training (``truncate_tokens`` of the recipe)."""
    batch_size: PositiveInt = 8
    """Prompts per forward pass."""

    def read_files(self) -> dict[str, str]:
        """Also the held-out file and the prior's: results recorded on other rows are not reused."""
        return {**super().read_files(), **file_digests((self.data, self.prior))}

    def resolve_paths(self, base: Path, where: str) -> None:
        super().resolve_paths(base, where)
        self.data = resolve_relative(self.data, base) or self.data
        self.prior = resolve_relative(self.prior, base)
        for field in ("data", "prior"):  # bad rows or no winner columns stop the run before any model is loaded
            if (path := getattr(self, field)) is not None:
                read_labelled_arena(path, label=f"{where}.{field}", needed_by=PREFERENCE_LABELS)


def _scores(probs: Any, labels: list[int], prefix: str = "") -> dict[str, Any]:
    return {f"{prefix}{key}": value for key, value in scores_of(probs, labels).items()}


def check_preference_prompts(task: PreferenceTask, tokenizer: Any) -> None:
    """With the tokenizer, before the model: the label tokens are single tokens and every held-out comparison
    leaves room within ``truncate_tokens``."""
    rows = read_labelled_arena(task.data, label=f"task {task.key}: data", needed_by=PREFERENCE_LABELS)[0]
    check_rows_fit(rows, tokenizer, task.label_tokens, task.truncate_tokens,
                   (f"task {task.key}: label_tokens", f"task {task.key}: truncate_tokens"))


def run_preference(task: PreferenceTask, ctx: EvalContext, results: SuiteResults) -> dict[str, Any]:
    if (done := results.finished(task)) is not None:
        return done
    where = f"suite {ctx.suite}: task {task.key}"
    rows, labels, _ = read_labelled_arena(task.data, label=f"{where}: data", needed_by=PREFERENCE_LABELS)
    prior = prior_probs(read_labelled_arena(task.prior, label=f"{where}: prior", needed_by=PREFERENCE_LABELS)[1]
                        if task.prior else labels)
    predictions = predict_rows(ctx.model, ctx.tokenizer, rows, task.label_tokens, task.truncate_tokens,
                               task.batch_size, desc=f"{ctx.suite}/{task.key}")
    summary = {**_scores(predictions.averaged, labels), **_scores([prior] * len(labels), labels, PRIOR),
               **_scores(predictions.probs, labels, FIRST_ORDER), "prior": list(prior),
               "prior_from": "training file" if task.prior else "held-out file",
               "swap_consistency": swap_consistency(predictions.probs, predictions.swapped),
               "inputs": predictions.inputs, "truncated_inputs": predictions.cut_inputs,
               "tokens_cut": predictions.cut_tokens, "truncate_tokens": task.truncate_tokens}
    summary["score"] = summary["accuracy"]
    return results.record(task, summary=summary)


class PreferenceFields(Scores, total=False):
    """A finished preference entry (:func:`run_preference`) as its readers take it: the classifier's scores, the
    order's effect, the inputs cut to fit and the class prior's probabilities; the prior's and the first order's
    scores are :class:`Scores` again, prefixed (:data:`PreferenceEntry`)."""

    n: Required[int]
    swap_consistency: Required[float | None]
    inputs: Required[int]
    truncated_inputs: Required[int]
    tokens_cut: Required[int]
    truncate_tokens: Required[int]
    prior: list[float]
    prior_from: str


PreferenceEntry = with_prefixed(PreferenceFields, Scores, PRIOR, FIRST_ORDER)
"""The shape of a finished preference entry: :class:`PreferenceFields` with ``prior_log_loss``, ...,
``first_order_log_loss``, ... (what :func:`run_preference` records with :func:`_scores`' prefixes)."""


def preference_headline(entry: Entry) -> str | None:
    if "log_loss" not in entry:
        return None
    ours, prior = score_with_interval(entry, "log_loss"), score_with_interval(entry, PRIOR + "log_loss")
    return f"log loss {ours} vs prior {prior}, n={entry['n']}, swap consistency {fmt(entry['swap_consistency'], 3)}"


def preference_rate(run: Run, tag: str, entry: Entry) -> Rate:
    """The score, the accuracy, counted (for results recorded before the count of right answers was kept, counted
    back from the accuracy and ``n``, as ``scores_of`` counts it)."""
    n = int(entry["n"])
    return Rate.of(int(entry["correct"]) if "correct" in entry else round(float(entry["score"]) * n), n)


def _row(tag: str, entry: Entry) -> list[str]:
    return [tag, str(entry["n"]), score_with_interval(entry, "log_loss"),
            score_with_interval(entry, FIRST_ORDER + "log_loss"),
            fmt(entry["swap_consistency"], 3), f"{entry['truncated_inputs']} of {entry['inputs']} "
            f"({entry['tokens_cut']} tokens cut, truncate_tokens {entry['truncate_tokens']})"]


def preference_section(run: Run) -> list[Block]:
    """The classifier's order effects and truncation; its scores against the prior and the jury are in the side
    by side table (``toolkit.evals.jury_pairwise_table``)."""
    blocks: list[Block] = []
    for suite, task in run.tasks("preference"):
        found = [(tag, entry) for tag, entry in run.found(suite, task) if "log_loss" in entry]
        if found:
            blocks += [Paragraph(f"{suite}/{task}: the log loss of both orders averaged (what predict writes) and "
                                 "of the order as given; swap consistency is the mean |p - p(swapped, exchanged "
                                 "back)| of one pass (0: the order is ignored); inputs of both orders cut to fit."),
                       Table(["tag", "n", "log loss, both orders", "log loss, one order", "swap consistency",
                              "inputs cut to fit"], [_row(tag, entry) for tag, entry in found])]
    return [Heading("Human preference: order and truncation"), *blocks] if blocks else []


TASK_TYPE = TaskType(PreferenceTask, run_preference, headline=preference_headline, section=preference_section,
                     rank=65, score_rate=preference_rate, check_prompts=check_preference_prompts,
                     entry=PreferenceEntry)
