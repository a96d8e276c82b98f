"""``report.md`` and a self-contained ``report.html`` from a run folder (``python -m toolkit report RUN``).

Reads the run folder (:mod:`toolkit.run_folder`), draws the plots into it and renders: the verdict
(``eval.verdict``, see :mod:`toolkit.report.verdict`), recipe (and what each resume changed in it), environment,
training curves, scores per stage against the model before extension, short-context retention, and one section per
task type (its ``TaskType``'s ``section``: needle heatmaps, RULER curves, RoPE comparison, loss by position, lm-eval
metrics, the jury). Every accuracy carries its 95% Wilson interval and n where the counts are known
(:mod:`toolkit.evals.stats`). Missing parts are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolkit.evals.registry import TASK_TYPES
from toolkit.evals.run_results import read_run
from toolkit.evals.stats import COMPARISON_INTERVAL
from toolkit.formatting.blocks import Block, Heading, Image, Paragraph, Table, to_html, to_markdown
from toolkit.formatting.numbers import fmt, is_number, setting_value
from toolkit.output_paths import write_text
from toolkit.recipe.schema import StageSpec
from toolkit.report.cells import difference_cell, score_cell
from toolkit.report.data import data_section, stage_label
from toolkit.report.plots import training_curves
from toolkit.report.verdict import retention_suites, suite_retention, verdict_blocks
from toolkit.run_folder import REPORT_HTML, REPORT_MD, Change, Resume, Run, RunInfo

RETENTION_RANK = 25
"""Where the short-context retention section goes among the task types' sections (after niah and ruler)."""


def recipe_section(run: Run) -> list[Block]:
    recipe, info = run.recipe, run.info
    if recipe is None:
        return [Heading("Recipe"), Paragraph(f"Base model: {info.base_model or '-'}. Method: {info.method or '-'}."),
                *_resumes(info)]
    model = recipe.model
    init = model.init_config.model_dump(exclude_none=True) if model.init_config else {}
    source = model.name_or_path or ("random init " + json.dumps(init, separators=(",", ":"))
                                    if init else info.base_model or "-")
    blocks: list[Block] = [Paragraph(recipe.description)] if recipe.description else []
    blocks += [Heading("Recipe"), Paragraph(f"Base model: {source}. Method: {recipe.method.kind}.")]
    rows = []
    ran = [stage.steps for stage in info.stages]
    for index, stage in enumerate(recipe.train.stages):
        rope_text = ", ".join(f"{k}={v}" for k, v in stage.rope.model_dump(mode="json").items() if v is not None)
        steps = ran[index] if index < len(ran) else None
        rows.append([stage.name or "-", str(stage.seq_len), rope_text, _budget(stage, steps), fmt(stage.lr, 6),
                     f"{stage.batch_size} x {stage.grad_accum}"])
    blocks.append(Table(["stage", "seq_len", "rope", "steps", "lr", "batch x accum"], rows))
    return blocks + _resumes(info)


def _resumes(info: RunInfo) -> list[Block]:
    """One line per resume (``run_info.json``): the checkpoint it continued from and each setting it changed, from the
    value in the record before it to the one the recipe above shows."""
    return [Paragraph(f"Resumed {_resumed_from(resume)}: {_changed(resume.changed)}.") for resume in info.resumed]


def _resumed_from(resume: Resume) -> str:
    if resume.stage is None:
        return resume.at
    return f"at stage {resume.stage} step {resume.step} ({resume.at})"


def _changed(changed: list[Change] | None) -> str:
    if changed is None:
        return "the settings it changed are not recorded"
    return "; ".join(f"{change.setting} {setting_value(change.before)} -> {setting_value(change.after)}"
                     for change in changed) or "no setting changed"


def _budget(stage: StageSpec, steps: int | None) -> str:
    """The steps the run gave a stage (``run_info.json``) beside the stage's own budget where they differ (a token
    budget, or ``train.max_steps`` capping it)."""
    own = str(stage.max_steps) if stage.max_steps is not None else f"{stage.max_tokens} tokens"
    if steps is None or own == str(steps):
        return own
    return f"{steps} ({own})" if stage.max_steps is None else f"{steps} (train.max_steps; the stage's {own})"


def environment_section(run: Run) -> list[Block]:
    info = run.info
    if not info.model_fields_set:  # no run_info.json, or an empty one
        return []
    versions = ", ".join(f"{k} {v}" for k, v in info.versions.items())
    on_gpu = info.allocator and not (info.device or "CPU").startswith("CPU")
    allocator = f"; GPU memory allocator: {info.allocator}" if on_gpu else ""
    blocks: list[Block] = [Heading("Environment"), Paragraph(
        f"Device: {info.device or '-'}; precision: {info.precision or '-'}; attention: {info.attention or '-'} "
        f"({info.attention_reason or 'no reason recorded'}){allocator}. Versions: {versions}. Toolkit commit: "
        f"{info.commit_text}.")]
    if info.stages:
        blocks.append(Table(["stage", "seq_len", "RoPE parameters", "max_position_embeddings", "steps"], [
            [str(s.name), str(s.seq_len), json.dumps(s.rope_parameters, separators=(",", ":")),
             str(s.max_position_embeddings), str(s.steps)] for s in info.stages]))
    return blocks


def training_section(run: Run) -> list[Block]:
    if not run.metrics:
        return [Heading("Training"), Paragraph("No metrics.jsonl in this run.")]
    stages: dict[str, list[dict[str, Any]]] = {}
    for row in run.metrics:
        stages.setdefault(stage_label(row), []).append(row)
    image = training_curves(stages, run.folder / "training.png")
    rows = [[name, str(points[-1].get("step")), fmt(points[0].get("loss")), fmt(points[-1].get("loss")),
             fmt(_mean(points, "tokens_per_s"), 0), fmt(_mean(points, "real_tokens_per_s"), 0),
             fmt(max((p["peak_memory_gib"] for p in points if "peak_memory_gib" in p), default=None), 2),
             fmt(points[-1].get("elapsed_s"), 1)] for name, points in stages.items()]
    return [Heading("Training"), Image(image, "loss and throughput per optimizer step"),
            Paragraph("Tokens/s counts every token of the rows, real tokens/s the tokens that are no padding; peak "
                      "memory is the most the GPU held in tensors (without one: the process's peak resident memory)."),
            Table(["stage", "steps", "first loss", "last loss", "mean tokens/s", "mean real tokens/s",
                   "peak memory GiB", "elapsed s"], rows)]


def _mean(points: list[dict[str, Any]], key: str) -> float | None:
    """The mean of ``key`` over the logged steps that record it (None where none does: older runs)."""
    values = [p[key] for p in points if key in p]
    return sum(values) / len(values) if values else None


def _fallbacks(run: Run) -> list[Block]:
    """A warning for every task whose haystack dataset was replaced by the built-in filler (``fallback: true``)."""
    notes = [f"{suite}/{task} at {tag}: {entry['haystack_fallback']}" for suite, task in run.tasks()
             for tag, entry in run.found(suite, task) if entry.get("haystack_fallback")]
    return [Paragraph("Warning: the built-in filler stood in for a haystack dataset in " + "; ".join(notes) + ".")
            ] if notes else []


def scores_section(run: Run) -> list[Block]:
    tags, ref = run.tags, run.reference
    if not tags:
        return [Heading("Evaluation"), Paragraph("No evaluation results in eval/.")]
    compared = run.compared
    header = ["suite / task", *tags] + ([f"final - {ref}"] if compared is not None else [])
    rows = []
    for suite, task in run.tasks():
        entries = [run.entry(tag, suite, task) for tag in tags]
        scores = [(entry or {}).get("score") for entry in entries]
        if not any(map(is_number, scores)):
            continue  # tasks without a main score (perplexity, RoPE comparison) have their own sections
        row = [f"{suite} / {task}", *(score_cell(run, tag, entry) for tag, entry in zip(tags, entries, strict=True))]
        if compared is not None:
            at = tags.index(compared)
            row.append(difference_cell(run, (tags[-1], entries[-1]), (compared, entries[at])))
        rows.append(row)
    intervals = f" {COMPARISON_INTERVAL}" if compared is not None else ""
    return [Heading("Evaluation"), Paragraph(f"Main score of every task (0-1) at each evaluation point with its 95% "
                                             f"Wilson interval and n (prompts or documents scored); the reference "
                                             f"before context extension is `{ref}`.{intervals}"),
            Table(header, rows), *_fallbacks(run)]


def retention_section(run: Run) -> list[Block]:
    """Final / before extension on the retention suites (``eval.verdict.retention_suites``): the tasks and ratios
    the verdict checks (:func:`toolkit.report.verdict.suite_retention`)."""
    ref, last = run.compared, run.final
    if ref is None or last is None:
        return []
    rows = []
    for suite in retention_suites(run):
        for task, ratio in suite_retention(run, suite, ref, last).items():
            old, new = run.entry(ref, suite, task), run.entry(last, suite, task)
            rows.append([f"{suite} / {task}", score_cell(run, ref, old), score_cell(run, last, new),
                         difference_cell(run, (last, new), (ref, old)), "-" if ratio is None else ratio.format()])
    if not rows:
        return []
    return [Heading("Short-context regression"),
            Paragraph(f"Final model ({last}) against the model before context extension ({ref}) on the "
                      "short-context suite; a ratio near 1 means the extension kept what the model could already do. "
                      f"{COMPARISON_INTERVAL}"),
            Table(["suite / task", ref, "final", "delta", f"final / {ref}"], rows)]


def _sections() -> list[Callable[[Run], list[Block]]]:
    ranked = [(kind.rank, section) for kind in TASK_TYPES.values() if (section := kind.section)]
    ranked.append((RETENTION_RANK, retention_section))
    return [recipe_section, environment_section, training_section, data_section, scores_section,
            *(section for _, section in sorted(ranked, key=lambda pair: pair[0]))]


def build_report(run_dir: Path) -> Run:
    """Write ``report.md``, ``report.html`` and the plots into ``run_dir``; returns the run as read for it."""
    run = read_run(Path(run_dir))
    title = f"Run report: {run.recipe.name if run.recipe else run.info.recipe or run.folder.name}"
    blocks: list[Block] = [Heading(title, 1), *verdict_blocks(run)]
    for section in _sections():
        blocks += section(run)
    for name, text in ((REPORT_MD, to_markdown(blocks, run.folder)), (REPORT_HTML, to_html(blocks, title))):
        write_text(run.folder / name, text)
    return run
