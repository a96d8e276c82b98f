"""The report's data section: per stage and source, the requested weight next to the tokens actually drawn; and
:func:`stage_label`, the stage a ``metrics.jsonl`` row is shown under in every per-stage table and plot."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from toolkit.formatting.blocks import Block, Heading, Paragraph, Table
from toolkit.formatting.numbers import fmt
from toolkit.run_folder import Run


def stage_label(row: Mapping[str, Any]) -> str:
    """The stage of a ``metrics.jsonl`` row: its ``stage_name``, else its stage index, else ``?``."""
    return str(row.get("stage_name", row.get("stage", "?")))


def _last_per_stage(metrics: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each stage's last ``metrics.jsonl`` record that counts tokens per source (counts run from the stage start)."""
    last: dict[str, dict[str, Any]] = {}
    for row in metrics:
        if row.get("source_tokens"):
            last[stage_label(row)] = row
    return last


def data_section(run: Run) -> list[Block]:
    stages = _last_per_stage(run.metrics)
    if not stages:
        return []
    rows = []
    for stage, record in stages.items():
        tokens: dict[str, int] = record["source_tokens"]
        weights: dict[str, float] = record.get("source_weights") or {}
        skipped: dict[str, int] = record.get("source_skipped_rows") or {}
        total = sum(tokens.values()) or 1
        for name, count in tokens.items():
            rows.append([stage, name, fmt(weights.get(name)), f"{count:,}", fmt(count / total),
                         str(skipped.get(name, 0))])
    return [Heading("Data"),
            Paragraph("Tokens drawn from each source (padding excluded) up to each stage's last logged step, their "
                      "share of the stage's tokens next to the weight the recipe asked for, and bad records skipped."),
            Table(["stage", "source", "weight", "tokens", "share", "skipped rows"], rows)]
