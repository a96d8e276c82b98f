"""The task types a suite can use: ``type:`` -> :class:`TaskType`. Everything that depends on a task's type looks
it up here. Each built-in type is one module ending with its ``TASK_TYPE``, listed in ``BUILT_IN`` at the end of
this file; to add a type, write its module (see ``evals/README.md``) and list it there.

niah, rope_compare and ruler build prompts with ``toolkit.data.needle.build_haystack``; ruler also with
``toolkit.evals.ruler_data``; perplexity reads ``toolkit.evals.haystack.long_document``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, get_args, get_origin

from toolkit.errors import UserError
from toolkit.evals import jury, jury_pairwise, lm_eval, niah, perplexity, preference, rope_compare, ruler
from toolkit.evals.haystack import load_sentences
from toolkit.evals.specs import TaskBase
from toolkit.evals.task_type import CardMetrics, Entry, TaskType, score_metric
from toolkit.formatting.numbers import is_number

TASK_TYPES: dict[str, TaskType] = {}
"""Registered types by name, in registration order."""


def _checked(kind: TaskType) -> TaskType:
    """``kind`` when its settings are a :class:`TaskBase` with ``type: Literal["<name>"]`` and its runner can be
    called; a ValueError saying what is wrong otherwise."""
    if not isinstance(kind, TaskType):
        raise ValueError(f"not a TaskType: {kind!r}")
    if not (isinstance(kind.spec, type) and issubclass(kind.spec, TaskBase)):
        raise ValueError(f"the settings of a task type must be a TaskBase subclass (got {kind.spec!r})")
    field = kind.spec.model_fields.get("type")
    names = get_args(field.annotation) if field is not None and get_origin(field.annotation) is Literal else ()
    if len(names) != 1 or not isinstance(names[0], str):
        raise ValueError(f"{kind.spec.__name__}.type must be Literal[\"<name>\"] with one name")
    if not callable(kind.runner):
        raise ValueError(f"task type {names[0]!r}: the runner is not callable")
    return kind


def register(kind: TaskType) -> TaskType:
    """Add a task type, checked; a ValueError for a name registered before."""
    name = _checked(kind).name
    if name in TASK_TYPES:
        raise ValueError(f"task type {name!r} is registered twice")
    TASK_TYPES[name] = kind
    return kind


def task_type(name: str) -> TaskType:
    """The registered type ``name``; a UserError naming the known ones otherwise."""
    if name not in TASK_TYPES:
        raise UserError(f"unknown task type {name!r} (known: {', '.join(TASK_TYPES)})")
    return TASK_TYPES[name]


def headline(entry: Entry) -> str:
    """One short line for a task's result: its score and the figure that matters for its type."""
    score = entry.get("score")
    parts = [f"score {score:.3f}" if is_number(score) else "score -"]
    kind = TASK_TYPES.get(entry.get("type") or "")
    if kind is not None and (extra := kind.headline(entry)):
        parts.append(extra)
    if entry.get("haystack_fallback"):
        parts.append(f"HAYSTACK FALLBACK: {entry['haystack_fallback']}")
    return ", ".join(parts)


def card_metrics(key: str, entry: Entry) -> CardMetrics:
    """The model card's metrics of one task (the main score for a type nobody registered)."""
    kind = TASK_TYPES.get(entry.get("type") or "")
    return kind.card_metrics(key, entry) if kind else score_metric(key, entry)


def card_detail(entry: Entry) -> str:
    """The model card's "details" cell of one task."""
    kind = TASK_TYPES.get(entry.get("type") or "")
    return kind.card_detail(entry) if kind else ""


BUILT_IN = (niah.TASK_TYPE, ruler.TASK_TYPE, lm_eval.TASK_TYPE, perplexity.TASK_TYPE, rope_compare.TASK_TYPE,
            jury.TASK_TYPE, jury_pairwise.TASK_TYPE, preference.TASK_TYPE)
"""The built-in types, in the order suites list them in error messages."""
for _kind in BUILT_IN:
    register(_kind)


def check_tasks(tasks: Iterable[TaskBase]) -> None:
    """What can be known of ``tasks`` before any model is loaded: every haystack read (kept for the evaluation), so a
    dataset out of reach stops the run now (or falls back where its spec says so), and each type's own check."""
    for task in tasks:
        for spec in task.haystacks().values():
            load_sentences(spec)
        if (check := TASK_TYPES[task.type].check) is not None:
            check(task)


def check_prompts(tasks: Iterable[TaskBase], tokenizer: Any) -> None:
    """With the tokenizer, before the model: every task's prompts can be built (each type's ``check_prompts``)."""
    for task in tasks:
        if (check := TASK_TYPES[task.type].check_prompts) is not None:
            check(task, tokenizer)
