"""The report's side-by-side table of human-preference predictors (the ``jury_pairwise`` type's section): at each
evaluation tag, the fine-tuned classifier (``preference`` tasks), the jury's panel and each judge, and the class
prior, with n, log loss, accuracy and Cohen's kappa against the human labels (each with its 95% interval), ECE, swap
consistency, and the jury's tokens and cost.
"""

from __future__ import annotations

from typing import Any

from toolkit.evals.jury_panel import cost_text, tokens_text
from toolkit.evals.preference import PRIOR
from toolkit.evals.preference_stats import BINS
from toolkit.formatting.blocks import Block, Heading, Paragraph, Table
from toolkit.formatting.numbers import fmt, score_with_interval
from toolkit.run_folder import Run

HEADER = ["predictor", "n", "log loss [95% CI]", "accuracy [95% CI]", "ECE", "Cohen kappa [95% CI]",
          "swap consistency", "tokens in/out", "est. cost"]


def table_row(name: str, scores: dict[str, Any]) -> list[str]:
    """One predictor's row from its recorded scores (``toolkit.evals.jury_pairwise_scores.scores_of``'s fields;
    usage where the predictor is a judge or the panel)."""
    tokens = tokens_text(scores) if "prompt_tokens" in scores else "-"
    cost = cost_text(scores) if "cost_usd" in scores else "-"
    log_loss, accuracy, kappa = (score_with_interval(scores, key) for key in ("log_loss", "accuracy", "kappa"))
    return [name, str(scores.get("n", "-")), log_loss, accuracy, fmt(scores.get("ece")), kappa,
            fmt(scores.get("swap_consistency")), tokens, cost]


def _jury_rows(label: str, entry: dict[str, Any]) -> list[list[str]]:
    rows = [table_row(f"{label}: jury panel ({len(entry['judges'])} judges)", entry["panel"])]
    rows += [table_row(f"{label}: judge {name} ({stats['backend']}: {stats['model']})", stats)
             for name, stats in entry["judges"].items()]
    if entry.get("prior"):
        rows.append(table_row(f"{label}: class prior", entry["prior"]))
    return rows


def _classifier_rows(label: str, entry: dict[str, Any]) -> list[list[str]]:
    """The ``preference`` entry's scores, and its prior's (recorded with a ``prior_`` prefix)."""
    prior = {key.removeprefix(PRIOR): value for key, value in entry.items() if key.startswith(PRIOR)}
    rows = [table_row(f"{label}: fine-tuned classifier", entry)]
    if "log_loss" in prior:
        rows.append(table_row(f"{label}: class prior of the {entry.get('prior_from', 'training file')}", prior))
    return rows


def side_by_side_section(run: Run) -> list[Block]:
    """Every ``preference`` and ``jury_pairwise`` task of a tag in one table (the rows each scored may differ:
    compare their n and data)."""
    blocks: list[Block] = []
    kinds = {"preference": _classifier_rows, "jury_pairwise": _jury_rows}
    for tag in run.tags:
        rows = [row for kind, rows_of in kinds.items() for suite, task in run.tasks(kind)
                if (entry := run.entry(tag, suite, task)) and entry.get("complete")
                for row in rows_of(f"{suite}/{task}", entry)]
        if rows:
            blocks += [Paragraph(f"At {tag}: probabilities of A better, B better and tie against the human labels. "
                                 "Log loss as the Chatbot Arena competition scores it (lower is better); accuracy "
                                 f"and Cohen's kappa of the most probable class; ECE over {BINS} bins; swap "
                                 "consistency is the mean absolute change of the probabilities when A and B are "
                                 "exchanged (0 = none)."), Table(HEADER, rows)]
    return [Heading("Human preference: classifier, jury and prior"), *blocks] if blocks else []
