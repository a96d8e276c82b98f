"""Table cells of the report: a task's main score with its 95% Wilson interval and n where the counts are known,
and accuracy-by-length tables. The cell of each task type is named in its registry entry (``score_cell``)."""

from __future__ import annotations

from typing import Any

from toolkit.evals.registry import TASK_TYPES
from toolkit.evals.stats import BINARY_METRICS, Rate, common_n, niah_overall
from toolkit.report.fmt import fmt, is_number
from toolkit.report.render import Table
from toolkit.run_folder import Run, eval_dir, read_json

Entry = dict[str, Any]


def score_cell(run: Run, tag: str, entry: Entry | None) -> str:
    """A task's main score as shown in tables: with its interval and n where they are known."""
    score = (entry or {}).get("score")
    if entry is None or not is_number(score):
        return "-"
    kind = TASK_TYPES.get(entry.get("type") or "")
    cell = kind.report_cell() if kind else None
    return cell(run, tag, entry) if cell else fmt(score)


def _rate_or_score(rate: Rate | None, entry: Entry) -> str:
    return rate.format() if rate is not None else fmt(entry["score"])


def niah_cell(run: Run, tag: str, entry: Entry) -> str:
    return _rate_or_score(niah_overall(entry), entry)


def ruler_cell(run: Run, tag: str, entry: Entry) -> str:
    values = [c["score"] for c in entry.get("cells", []) if is_number(c.get("score"))]
    if values and not all(v in (0, 1) for v in values):
        return f"{entry['score']:.2f} n={len(values)} (partial matches)"
    return (Rate.of(int(sum(values)), len(values)) if values else Rate(float(entry["score"]))).format()


def lm_eval_counts(run: Run, tag: str, entry: Entry) -> dict[str, int]:
    """Documents scored per lm-eval task: recorded in the entry, else read from lm-eval's own JSON."""
    if isinstance(entry.get("n"), dict):
        return {task: n for task, n in entry["n"].items() if isinstance(n, int)}
    raw = read_json(eval_dir(run.folder, tag) / entry["lm_eval_json"]) if entry.get("lm_eval_json") else None
    samples = raw.get("n-samples", {}) if isinstance(raw, dict) else {}
    return {task: counts["effective"] for task, counts in samples.items()
            if isinstance(counts, dict) and isinstance(counts.get("effective"), int)}


def lm_eval_rate(run: Run, tag: str, entry: Entry) -> Rate | None:
    """The main score of an lm_eval entry with pooled counts; ``None`` for a metric that is not a fraction."""
    metric, counts = (entry.get("identity") or {}).get("metric"), lm_eval_counts(run, tag, entry)
    correct = total = 0
    for task, values in (entry.get("metrics") or {}).items():
        chosen = [(k, v) for k, v in values.items() if metric is None or k.split(",")[0] == metric][:1]
        if not chosen:
            continue
        (name, value), n = chosen[0], counts.get(task)
        if name.split(",")[0] not in BINARY_METRICS:
            return None
        if n is None:
            return Rate(float(entry["score"]))
        correct, total = correct + round(value * n), total + n
    return Rate.of(correct, total) if total else None


def lm_eval_cell(run: Run, tag: str, entry: Entry) -> str:
    return _rate_or_score(lm_eval_rate(run, tag, entry), entry)


def jury_cell(run: Run, tag: str, entry: Entry) -> str:
    """The panel's score: fraction correct with its interval (max voting), or the mean 1-5 rating (average)."""
    unjudged = (entry.get("panel") or {}).get("unjudged")
    note = f" ({unjudged} unjudged)" if unjudged else ""
    if entry.get("pooling") == "average":
        return f"{fmt(entry.get('mean_rating'), 2)}/5 n={entry.get('n')}{note}"
    return Rate.of(int(entry["correct"]), int(entry["n"])).format() + note


def by_length_table(rows: list[tuple[str, dict[int, Rate]]]) -> tuple[Table, str]:
    """Accuracy by length, a row per label, and how many prompts each cell counts (said once when uniform)."""
    lengths = sorted({length for _, rates in rows for length in rates})
    n = common_n(rates for _, rates in rows)
    table = Table(["model", *map(str, lengths)],
                  [[label, *(rates[k].format(with_n=n is None) if k in rates else "-" for k in lengths)]
                   for label, rates in rows])
    return table, (f"n={n} prompts per length" if n is not None else "n per cell")
