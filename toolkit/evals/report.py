"""``report.md`` and a self-contained ``report.html`` from a run folder (``python -m toolkit report RUN``).

Reads what exists (recipe.resolved.yaml, run_info.json, metrics.jsonl, eval/<tag>/<suite>.json), draws the
plots into the run folder and renders: the verdict (``eval.verdict``, see ``toolkit.evals.verdict``), recipe,
environment, training curves, scores per stage against the base model, needle heatmaps before/after, RULER curves
and effective length, short-context regression, zero-shot RoPE comparison, perplexity by position and lm-eval
metrics. Every accuracy carries its 95% Wilson interval and n where the counts are known (``toolkit.evals.stats``).
Missing parts are skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from toolkit.errors import UserError
from toolkit.evals import plots
from toolkit.evals.report_render import Block, Heading, Image, Paragraph, Table, to_html, to_markdown
from toolkit.evals.stats import BINARY_METRICS, Rate, lm_eval_rates, niah_overall, niah_rates

Evals = dict[str, dict[str, dict[str, Any]]]
"""tag -> suite name -> that suite's results JSON."""


@dataclass
class Run:
    folder: Path
    recipe: dict[str, Any]
    info: dict[str, Any]
    metrics: list[dict[str, Any]]
    evals: Evals

    @property
    def tags(self) -> list[str]:
        return _tag_order(self.evals)

    @property
    def reference(self) -> str | None:
        """The model before any context extension, which the final model is compared with: the last stage
        trained within the native length (a model trained from scratch), else the starting model (``base``)."""
        tags, native = self.tags, self.info.get("native_length")
        found = "base" if "base" in tags else None
        for index, stage in enumerate(self.info.get("stages") or []):
            if native and stage.get("seq_len", native + 1) <= native:
                found = next((tag for tag in tags if tag.startswith(f"stage-{index}-")), found)
        return found


def _tag_order(tags: Any) -> list[str]:
    def key(tag: str) -> tuple[int, int, str]:
        stage = re.match(r"stage-(\d+)", tag)
        return (0 if tag == "base" else 1 if stage else 2, int(stage.group(1)) if stage else 0, tag)
    return sorted(tags, key=key)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def load_run(folder: Path) -> Run:
    if not folder.is_dir():
        raise UserError(f"{folder}: no such run folder")
    recipe_file = folder / "recipe.resolved.yaml"
    recipe = yaml.safe_load(recipe_file.read_text(encoding="utf-8")) if recipe_file.is_file() else None
    metrics_file = folder / "metrics.jsonl"
    metrics = ([json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines() if line.strip()]
               if metrics_file.is_file() else [])
    evals: Evals = {}
    for path in sorted((folder / "eval").glob("*/*.json")):
        data = _json(path)
        if isinstance(data, dict) and isinstance(data.get("tasks"), dict):
            evals.setdefault(path.parent.name, {})[data.get("suite", path.stem)] = data
    return Run(folder, recipe if isinstance(recipe, dict) else {}, _json(folder / "run_info.json") or {}, metrics,
               evals)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tasks(run: Run, kind: str | None = None) -> list[tuple[str, str]]:
    """(suite, task) pairs in order of first appearance, optionally of one type."""
    seen: dict[tuple[str, str], None] = {}
    for tag in run.tags:
        for suite, data in run.evals[tag].items():
            for key, entry in data["tasks"].items():
                if kind is None or entry.get("type") == kind:
                    seen[(suite, key)] = None
    return list(seen)


def _entry(run: Run, tag: str, suite: str, task: str) -> dict[str, Any] | None:
    return run.evals.get(tag, {}).get(suite, {}).get("tasks", {}).get(task)


def _with(run: Run, suite: str, task: str) -> list[tuple[str, dict[str, Any]]]:
    return [(tag, entry) for tag in run.tags if (entry := _entry(run, tag, suite, task))]


def _lm_eval_counts(run: Run, tag: str, entry: dict[str, Any]) -> dict[str, int]:
    """Documents scored per lm-eval task: recorded in the entry, else read from lm-eval's own JSON."""
    if isinstance(entry.get("n"), dict):
        return {task: n for task, n in entry["n"].items() if isinstance(n, int)}
    raw = _json(run.folder / "eval" / tag / entry["lm_eval_json"]) if entry.get("lm_eval_json") else None
    samples = raw.get("n-samples", {}) if isinstance(raw, dict) else {}
    return {task: counts["effective"] for task, counts in samples.items()
            if isinstance(counts, dict) and isinstance(counts.get("effective"), int)}


def _lm_eval_rate(run: Run, tag: str, entry: dict[str, Any]) -> Rate | None:
    """The main score of an lm_eval entry with pooled counts; ``None`` for a metric that is not a fraction."""
    metric, counts = (entry.get("identity") or {}).get("metric"), _lm_eval_counts(run, tag, entry)
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


def _score_cell(run: Run, tag: str, entry: dict[str, Any] | None) -> str:
    """A task's main score as shown in tables: with its interval and n where they are known."""
    score = (entry or {}).get("score")
    if not _number(score):
        return "-"
    rate: Rate | None = None
    if entry.get("type") == "niah":
        rate = niah_overall(entry)
    elif entry.get("type") == "lm_eval":
        rate = _lm_eval_rate(run, tag, entry)
    elif entry.get("type") == "ruler":
        values = [c["score"] for c in entry.get("cells", []) if _number(c.get("score"))]
        if values and all(v in (0, 1) for v in values):
            rate = Rate.of(int(sum(values)), len(values))
        elif values:
            return f"{score:.2f} n={len(values)} (partial matches)"
        else:
            rate = Rate(float(score))
    return rate.format() if rate is not None else _fmt(score)


def _by_length_table(rows: list[tuple[str, dict[int, Rate]]]) -> tuple[Table, str]:
    """Accuracy by length, a row per label, and how many prompts each cell counts (said once when uniform)."""
    lengths = sorted({length for _, rates in rows for length in rates})
    counts = {rate.n for _, rates in rows for rate in rates.values()}
    same = len(counts) == 1 and None not in counts
    table = Table(["model", *map(str, lengths)],
                  [[label, *(rates[n].format(with_n=not same) if n in rates else "-" for n in lengths)]
                   for label, rates in rows])
    return table, (f"n={counts.pop()} prompts per length" if same else "n per cell")


def recipe_section(run: Run) -> list[Block]:
    recipe, info = run.recipe, run.info
    model = recipe.get("model") or {}
    init = model.get("init_config")
    source = model.get("name_or_path") or (
        "random init " + json.dumps(init, separators=(",", ":")) if init else info.get("base_model", "-"))
    method = (recipe.get("method") or {}).get("kind") or info.get("method", "-")
    blocks: list[Block] = [Paragraph(recipe["description"])] if recipe.get("description") else []
    blocks += [Heading("Recipe"), Paragraph(f"Base model: {source}. Method: {method}.")]
    stages = (recipe.get("train") or {}).get("stages") or []
    if stages:
        rows = []
        for stage in stages:
            rope = stage.get("rope") or {}
            rope_text = ", ".join(f"{k}={v}" for k, v in rope.items() if v is not None)
            budget = stage.get("max_steps") or f"{stage.get('max_tokens')} tokens"
            rows.append([str(stage.get("name") or "-"), str(stage.get("seq_len")), rope_text, str(budget),
                         _fmt(stage.get("lr"), 6), f"{stage.get('batch_size', 1)} x {stage.get('grad_accum', 1)}"])
        blocks.append(Table(["stage", "seq_len", "rope", "steps", "lr", "batch x accum"], rows))
    return blocks


def environment_section(run: Run) -> list[Block]:
    info = run.info
    if not info:
        return []
    versions = ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items())
    blocks: list[Block] = [Heading("Environment"), Paragraph(
        f"Device: {info.get('device', '-')}; precision: {info.get('precision', '-')}; attention: "
        f"{info.get('attention', '-')} ({info.get('attention_reason', 'no reason recorded')}). Versions: {versions}.")]
    stages = info.get("stages") or []
    if stages:
        blocks.append(Table(["stage", "seq_len", "RoPE parameters", "max_position_embeddings", "steps"], [
            [str(s.get("name")), str(s.get("seq_len")), json.dumps(s.get("rope_parameters"), separators=(",", ":")),
             str(s.get("max_position_embeddings")), str(s.get("steps"))] for s in stages]))
    return blocks


def training_section(run: Run) -> list[Block]:
    if not run.metrics:
        return [Heading("Training"), Paragraph("No metrics.jsonl in this run.")]
    image = plots.training_curves(run.metrics, run.folder / "training.png")
    stages: dict[str, list[dict[str, Any]]] = {}
    for row in run.metrics:
        stages.setdefault(str(row.get("stage_name", row.get("stage"))), []).append(row)
    rows = [[name, str(points[-1].get("step")), _fmt(points[0].get("loss")), _fmt(points[-1].get("loss")),
             _fmt(sum(p.get("tokens_per_s", 0.0) for p in points) / len(points), 0),
             _fmt(points[-1].get("elapsed_s"), 1)] for name, points in stages.items()]
    return [Heading("Training"), Image(image, "loss and throughput per optimizer step"),
            Table(["stage", "steps", "first loss", "last loss", "mean tokens/s", "elapsed s"], rows)]


def scores_section(run: Run) -> list[Block]:
    tags, ref = run.tags, run.reference
    if not tags:
        return [Heading("Evaluation"), Paragraph("No evaluation results in eval/.")]
    compare = ref is not None and ref != tags[-1]
    header = ["suite / task", *tags] + ([f"final - {ref}"] if compare else [])
    rows = []
    for suite, task in _tasks(run):
        entries = [_entry(run, tag, suite, task) for tag in tags]
        scores = [(entry or {}).get("score") for entry in entries]
        if not any(map(_number, scores)):
            continue  # tasks without a main score (perplexity, RoPE comparison) have their own sections
        row = [f"{suite} / {task}", *(_score_cell(run, tag, entry) for tag, entry in zip(tags, entries))]
        if compare:
            before, final = scores[tags.index(ref)], scores[-1]
            row.append(f"{final - before:+.3f}" if _number(before) and _number(final) else "-")
        rows.append(row)
    return [Heading("Evaluation"), Paragraph(f"Main score of every task (0-1) at each evaluation point with its 95% "
                                             f"Wilson interval and n (prompts or documents scored); the reference "
                                             f"before context extension is `{ref}`."),
            Table(header, rows)]


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
    for suite, task in _tasks(run, "niah"):
        found = [(tag, entry) for tag, entry in _with(run, suite, task) if entry.get("grid")]
        panels = heatmap_panels(run, found)
        if not panels:
            continue
        roles = {found[0][0]: "start", run.reference: "before extension", found[-1][0]: "final"}
        titles = [f"{roles.get(tag, tag)}: {tag}\nmean {niah_overall(entry) or Rate(entry['mean'])}"
                  for tag, entry in panels]
        path = plots.niah_heatmaps([(title, entry["grid"]) for title, (_, entry) in zip(titles, panels)],
                                   f"{suite}/{task}: accuracy (%) by needle depth and context length",
                                   run.folder / f"niah-{suite}-{task}.png")
        table, n_text = _by_length_table([(tag, niah_rates(entry)) for tag, entry in found])
        blocks += [Image(path, f"needle in a haystack {suite}/{task}: {', '.join(tag for tag, _ in panels)}"),
                   Paragraph(f"{suite}/{task}: accuracy by length with 95% Wilson intervals, {n_text}."), table]
    return [Heading("Needle in a haystack"), *blocks] if blocks else []


def ruler_section(run: Run) -> list[Block]:
    blocks: list[Block] = []
    for suite, task in _tasks(run, "ruler"):
        found = _with(run, suite, task)
        threshold = found[-1][1].get("threshold")
        path = plots.score_vs_length({tag: e["scores_by_length"] for tag, e in found}, f"{suite}/{task}",
                                     run.folder / f"ruler-{suite}-{task}.png", threshold)
        blocks += [Image(path, f"RULER {suite}/{task}: mean score by length"),
                   Table(["tag", "effective length", "mean score"],
                         [[tag, _fmt(e.get("effective_length")), _fmt(e.get("score"))] for tag, e in found])]
    if not blocks:
        return []
    return [Heading("RULER"), Paragraph("Effective length: the longest length whose score, and every shorter "
                                        "length's, exceeds the threshold (RULER: 85.6%)."), *blocks]


def short_context_section(run: Run) -> list[Block]:
    tags, ref = run.tags, run.reference
    if ref is None or ref == tags[-1]:
        return []
    rows = []
    for suite, task in _tasks(run):
        if "short-context" not in suite:
            continue
        old, new = _entry(run, ref, suite, task), _entry(run, tags[-1], suite, task)
        before, final = (old or {}).get("score"), (new or {}).get("score")
        if _number(before) and _number(final):
            ratio = _fmt(final / before) if before else "-"
            rows.append([f"{suite} / {task}", _score_cell(run, ref, old), _score_cell(run, tags[-1], new),
                         f"{final - before:+.3f}", ratio])
    if not rows:
        return []
    return [Heading("Short-context regression"),
            Paragraph(f"Final model ({tags[-1]}) against the model before context extension ({ref}) on the "
                      "short-context suite; a ratio near 1 means the extension kept what the model could already do."),
            Table(["suite / task", ref, "final", "delta", f"final / {ref}"], rows)]


def _setting_cell(entry: dict[str, Any], name: str) -> str:
    setting = entry["settings"].get(name)
    if not setting:
        return "-"
    rate = niah_overall(setting, [c for c in entry.get("cells", []) if c.get("setting") == name])
    return rate.format() if rate is not None else "-"


def rope_section(run: Run) -> list[Block]:
    blocks: list[Block] = []
    for suite, task in _tasks(run, "rope_compare"):
        found = _with(run, suite, task)
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
    for suite, task in _tasks(run, "perplexity"):
        found = _with(run, suite, task)
        path = plots.loss_by_position({tag: e["loss_by_bucket"] for tag, e in found}, f"{suite}/{task}",
                                      run.folder / f"perplexity-{suite}-{task}.png")
        blocks += [Image(path, f"loss by position {suite}/{task}"),
                   Table(["tag", "mean loss", "perplexity"],
                         [[tag, _fmt(e.get("mean_loss")), _fmt(e.get("perplexity"))] for tag, e in found])]
    return [Heading("Loss by position"), *blocks] if blocks else []


def lm_eval_section(run: Run) -> list[Block]:
    tags, rows = run.tags, []
    for suite, task in _tasks(run, "lm_eval"):
        found = dict(_with(run, suite, task))
        rates = {tag: lm_eval_rates(e, _lm_eval_counts(run, tag, e)) for tag, e in found.items()}
        pairs = dict.fromkeys((name, metric) for e in found.values()
                              for name, values in e["metrics"].items() for metric in values)
        for name, metric in pairs:
            cells = [rate.format() if (rate := rates.get(tag, {}).get((name, metric))) else
                     _fmt(found.get(tag, {}).get("metrics", {}).get(name, {}).get(metric)) for tag in tags]
            rows.append([f"{suite} / {name}", metric, *cells])
    if not rows:
        return []
    return [Heading("lm-eval"), Paragraph("Fraction-correct metrics with their 95% Wilson interval and n (documents "
                                          "scored; unknown for results recorded before counts were kept)."),
            Table(["suite / task", "metric", *tags], rows)]


_SECTIONS = (recipe_section, environment_section, training_section, scores_section, niah_section, ruler_section,
             short_context_section, rope_section, perplexity_section, lm_eval_section)


def build_report(run_dir: Path) -> None:
    """Write ``report.md``, ``report.html`` and the plots into ``run_dir``."""
    run = load_run(Path(run_dir))
    title = f"Run report: {run.recipe.get('name') or run.info.get('recipe') or run.folder.name}"
    from toolkit.evals.verdict import verdict_blocks  # verdict builds on this module

    blocks: list[Block] = [Heading(title, 1), *verdict_blocks(run)]
    for section in _SECTIONS:
        blocks += section(run)
    (run.folder / "report.md").write_text(to_markdown(blocks, run.folder), encoding="utf-8")
    (run.folder / "report.html").write_text(to_html(blocks, title), encoding="utf-8")
