"""The report section of each task type (named in its registry entry, ``section``): needle heatmaps before and
after extension, RULER curves and effective length, the zero-shot RoPE comparison, loss by position, lm-eval,
the judges of a jury."""

from __future__ import annotations

import json
from typing import Any

from toolkit.evals import plots
from toolkit.evals.stats import Rate, lm_eval_rates, niah_overall, niah_rates
from toolkit.report.cells import by_length_table, lm_eval_counts
from toolkit.report.fmt import fmt
from toolkit.report.plots import niah_heatmaps
from toolkit.report.render import Block, Heading, Image, Paragraph, Table
from toolkit.run_folder import Run


def _all_zero(entry: dict[str, Any]) -> bool:
    return not any(value for row in entry.get("grid", {}).values() for value in row.values())


def heatmap_panels(run: Run, found: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """The grids drawn side by side: before extension and final, plus the starting model unless it scores 0
    everywhere (an untrained base)."""
    if not found:
        return []
    final, start = found[-1][0], found[0][0]
    keep = {run.reference, final} | ({start} if not _all_zero(found[0][1]) else set())
    return [(tag, entry) for tag, entry in found if tag in keep]


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


def ruler_section(run: Run) -> list[Block]:
    blocks: list[Block] = []
    for suite, task in run.tasks("ruler"):
        found = run.found(suite, task)
        threshold = found[-1][1].get("threshold")
        path = plots.score_vs_length({tag: e["scores_by_length"] for tag, e in found}, f"{suite}/{task}",
                                     run.folder / f"ruler-{suite}-{task}.png", threshold)
        blocks += [Image(path, f"RULER {suite}/{task}: mean score by length"),
                   Table(["tag", "effective length", "mean score"],
                         [[tag, fmt(e.get("effective_length")), fmt(e.get("score"))] for tag, e in found])]
    if not blocks:
        return []
    return [Heading("RULER"), Paragraph("Effective length: the longest length whose score, and every shorter "
                                        "length's, exceeds the threshold (RULER: 85.6%)."), *blocks]


def _setting_cell(entry: dict[str, Any], name: str) -> str:
    setting = entry["settings"].get(name)
    if not setting:
        return "-"
    rate = niah_overall(setting, [c for c in entry.get("cells", []) if c.get("setting") == name])
    return rate.format() if rate is not None else "-"


def rope_section(run: Run) -> list[Block]:
    blocks: list[Block] = []
    for suite, task in run.tasks("rope_compare"):
        found = run.found(suite, task)
        names = list(dict.fromkeys(name for _, e in found for name in e["settings"]))
        rows = [[name, *(_setting_cell(e, name) for _, e in found),
                 json.dumps(next(e["settings"][name]["rope_parameters"] for _, e in found if name in e["settings"]),
                            separators=(",", ":"))] for name in names]
        lengths = sorted({int(n) for _, e in found for s in e["settings"].values() for n in s["scores_by_length"]})
        blocks += [Paragraph(f"{suite}/{task}: needle accuracy at {', '.join(map(str, lengths))} tokens (95% Wilson "
                             f"interval, n prompts), native length {found[-1][1].get('native_length')}, no "
                             "fine-tuning for the setting."),
                   Table(["RoPE setting", *(tag for tag, _ in found), "parameters"], rows)]
    return [Heading("Zero-shot RoPE comparison"), *blocks] if blocks else []


def perplexity_section(run: Run) -> list[Block]:
    blocks: list[Block] = []
    for suite, task in run.tasks("perplexity"):
        found = run.found(suite, task)
        path = plots.loss_by_position({tag: e["loss_by_bucket"] for tag, e in found}, f"{suite}/{task}",
                                      run.folder / f"perplexity-{suite}-{task}.png")
        blocks += [Image(path, f"loss by position {suite}/{task}"),
                   Table(["tag", "mean loss", "perplexity"],
                         [[tag, fmt(e.get("mean_loss")), fmt(e.get("perplexity"))] for tag, e in found])]
    return [Heading("Loss by position"), *blocks] if blocks else []


def lm_eval_section(run: Run) -> list[Block]:
    tags, rows = run.tags, []
    for suite, task in run.tasks("lm_eval"):
        found = dict(run.found(suite, task))
        rates = {tag: lm_eval_rates(e, lm_eval_counts(run, tag, e)) for tag, e in found.items()}
        pairs = dict.fromkeys((name, metric) for e in found.values()
                              for name, values in e["metrics"].items() for metric in values)
        for name, metric in pairs:
            cells = [rate.format() if (rate := rates.get(tag, {}).get((name, metric))) else
                     fmt(found.get(tag, {}).get("metrics", {}).get(name, {}).get(metric)) for tag in tags]
            rows.append([f"{suite} / {name}", metric, *cells])
    if not rows:
        return []
    return [Heading("lm-eval"), Paragraph("Fraction-correct metrics with their 95% Wilson interval and n (documents "
                                          "scored; unknown for results recorded before counts were kept)."),
            Table(["suite / task", "metric", *tags], rows)]


def _jury_row(name: str, stats: dict[str, Any], fleiss: str) -> list[str]:
    return [name, fmt(stats["score"], 2), str(stats["n"]), str(stats["calls"]), str(stats["failed"]),
            str(stats["unparsed"]), str(stats["attempts"]), fleiss,
            f"{fmt(stats['human_kappa'], 2)} n={stats['human_n']}",
            f"{stats['prompt_tokens']}/{stats['completion_tokens']}", fmt(stats["seconds"], 1),
            f"${stats['cost_usd']:.4f}"]


def jury_section(run: Run) -> list[Block]:
    blocks: list[Block] = []
    for suite, task in run.tasks("jury"):
        for tag, entry in run.found(suite, task):
            panel, judges = entry.get("panel"), entry.get("judges") or {}
            if not panel:
                continue
            rows = [_jury_row(f"{name} ({stats['backend']}: {stats['model']})", stats, "")
                    for name, stats in judges.items()]
            rows.append(_jury_row("panel", panel, f"{fmt(panel['fleiss_kappa'], 2)} n={panel['fleiss_n']}"))
            setting = ("max voting of True/False verdicts (ties: incorrect); score = fraction correct; Cohen's "
                       "kappa unweighted" if entry["pooling"] == "max_vote" else
                       "average pooling of 1-5 ratings; score = (mean - 1) / 4; Fleiss' kappa over the 5 ratings "
                       "as categories; Cohen's kappa quadratic-weighted, the panel's mean rounded half up")
            blocks += [Paragraph(f"{suite}/{task} at {tag}: {setting}. {panel['n']} of {entry['items']} answers "
                                 f"judged ({panel['unjudged']} unjudged: no judge gave a verdict); failed or "
                                 f"unparseable verdicts are left out of that answer's pooling. Raw outputs: "
                                 f"eval/{tag}/{entry.get('raw_outputs')}."),
                       Table(["judge", "score", "answers scored", "calls", "failed", "unparsed", "attempts",
                              "Fleiss kappa", "Cohen kappa vs humans", "tokens in/out", "seconds", "est. cost"], rows)]
    return [Heading("Jury (PoLL)"), *blocks] if blocks else []
