"""The task types a suite can use: ``type:`` -> :class:`TaskType` (settings, runner, version, headline, report
section, card metrics). Everything that depends on a task's type looks it up here; to add a type, write its
module (see ``evals/README.md``) and register it with one line at the end of this file.

Versions: bump one when its prompts, data or scoring change, so cached cells are not reused. niah, rope_compare
and ruler build prompts with ``toolkit.data.needle.build_haystack``; ruler also with ``toolkit.evals.ruler_data``;
perplexity reads ``toolkit.evals.sources.long_document``.
"""

from __future__ import annotations

from toolkit.errors import UserError
from toolkit.evals.jury_spec import JuryTask
from toolkit.evals.specs import LmEvalTask, NiahTask, PerplexityTask, RopeCompareTask, RulerTask
from toolkit.evals.task_type import CardMetrics, Entry, TaskType, resolve, score_metric
from toolkit.report.fmt import fmt, is_number, number, rounded

TASK_TYPES: dict[str, TaskType] = {}
"""Registered types by name, in registration order."""


def register(task_type: TaskType | str) -> TaskType:
    """Add a task type (or the ``"module:NAME"`` of one, imported now)."""
    kind: TaskType = resolve(task_type)
    if kind.name in TASK_TYPES:
        raise ValueError(f"task type {kind.name!r} is registered twice")
    TASK_TYPES[kind.name] = kind
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


def _ruler_headline(entry: Entry) -> str:
    return f"effective length {entry.get('effective_length')}"


def _perplexity_headline(entry: Entry) -> str | None:
    return f"perplexity {entry['perplexity']:.3f}" if "perplexity" in entry else None


def _rope_headline(entry: Entry) -> str | None:
    if not entry.get("settings"):
        return None
    return f"best {entry.get('best')}: " + ", ".join(f"{n} {s['score']:.2f}" for n, s in entry["settings"].items())


def _jury_headline(entry: Entry) -> str | None:
    panel = entry.get("panel")
    if not panel:
        return None
    trouble = f"{panel['failed']} failed, {panel['unparsed']} unparsed of {panel['calls']} judge calls"
    return (f"{entry['pooling']} over {panel['n']} answers ({panel['unjudged']} unjudged), Fleiss kappa "
            f"{fmt(panel['fleiss_kappa'])}, human kappa {fmt(panel['human_kappa'])}, {trouble}")


def _niah_card(key: str, entry: Entry) -> CardMetrics:
    return {key: [("accuracy", "needle grid mean", rounded(entry.get("mean", entry.get("score"))))]}


def _ruler_card(key: str, entry: Entry) -> CardMetrics:
    per_length = sorted(entry.get("scores_by_length", {}).items(), key=lambda item: int(item[0]))
    return {key: [("accuracy", "mean score", rounded(entry.get("score"))),
                  ("effective_length", "RULER effective length (tokens)", entry.get("effective_length"))]
            + [(f"accuracy@{length}", f"score at {length} tokens", rounded(v)) for length, v in per_length]}


def _niah_detail(entry: Entry) -> str:
    return f"grid mean {fmt(number(entry.get('mean')))} over {len(entry.get('grid', {}))} lengths"


def _ruler_detail(entry: Entry) -> str:
    per_length = sorted(entry.get("scores_by_length", {}).items(), key=lambda item: int(item[0]))
    lengths = ", ".join(f"{length}: {fmt(number(v))}" for length, v in per_length)
    return f"effective length {entry.get('effective_length') or '-'}; {lengths}"


def _lm_eval_card(key: str, entry: Entry) -> CardMetrics:
    return {subtask: [(name.split(",")[0], name, rounded(value)) for name, value in metrics.items()
                      if "stderr" not in name and isinstance(value, (int, float))]
            for subtask, metrics in entry.get("metrics", {}).items()}


_SECTIONS, _CELLS = "toolkit.report.sections", "toolkit.report.cells"
register(TaskType(NiahTask, "toolkit.evals.niah:run_niah", version=1, section=f"{_SECTIONS}:niah_section", rank=10,
                  score_cell=f"{_CELLS}:niah_cell", card_metrics=_niah_card, card_detail=_niah_detail))
register(TaskType(RulerTask, "toolkit.evals.ruler:run_ruler", version=1, cache_ignores=frozenset({"tasks"}),
                  headline=_ruler_headline, section=f"{_SECTIONS}:ruler_section", rank=20,
                  score_cell=f"{_CELLS}:ruler_cell", card_metrics=_ruler_card, card_detail=_ruler_detail))
register(TaskType(LmEvalTask, "toolkit.evals.lmeval_bridge:run_lm_eval", version=1,
                  section=f"{_SECTIONS}:lm_eval_section", rank=50, score_cell=f"{_CELLS}:lm_eval_cell",
                  card_metrics=_lm_eval_card))
register(TaskType(PerplexityTask, "toolkit.evals.perplexity:run_perplexity", version=1,
                  headline=_perplexity_headline, section=f"{_SECTIONS}:perplexity_section", rank=40))
register(TaskType(RopeCompareTask, "toolkit.evals.rope_compare:run_rope_compare", version=1,
                  headline=_rope_headline, section=f"{_SECTIONS}:rope_section", rank=30))
register(TaskType(JuryTask, "toolkit.evals.jury:run_jury", version=1, headline=_jury_headline,
                  section=f"{_SECTIONS}:jury_section", rank=60, score_cell=f"{_CELLS}:jury_cell"))
