"""``report.md`` and a self-contained ``report.html`` from a run folder (``python -m toolkit report RUN``).

Reads what exists (recipe.resolved.yaml, run_info.json, metrics.jsonl, eval/<tag>/<suite>.json), draws the
plots into the run folder and renders: recipe, environment, training curves, scores per stage against the
base model, needle heatmaps before/after, RULER curves and effective length, short-context regression,
zero-shot RoPE comparison, perplexity by position and lm-eval metrics. Missing parts are skipped.
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
        scores = [(_entry(run, tag, suite, task) or {}).get("score") for tag in tags]
        if not any(map(_number, scores)):
            continue  # tasks without a main score (perplexity, RoPE comparison) have their own sections
        row = [f"{suite} / {task}", *map(_fmt, scores)]
        if compare:
            before, final = scores[tags.index(ref)], scores[-1]
            row.append(f"{final - before:+.3f}" if _number(before) and _number(final) else "-")
        rows.append(row)
    return [Heading("Evaluation"), Paragraph(f"Main score of every task (0-1) at each evaluation point; the "
                                             f"reference before context extension is `{ref}`."),
            Table(header, rows)]


def niah_section(run: Run) -> list[Block]:
    blocks: list[Block] = []
    for suite, task in _tasks(run, "niah"):
        found = _with(run, suite, task)
        keep = {found[0][0], run.reference, found[-1][0]} if found else set()  # start, before extension, final
        for tag, entry in [(tag, entry) for tag, entry in found if tag in keep]:
            path = run.folder / f"niah-{suite}-{task}-{tag}.png"
            plots.niah_heatmap(entry["grid"], f"{suite}/{task} [{tag}]: mean {entry['mean']:.3f}", path)
            blocks.append(Image(path, f"needle in a haystack {suite}/{task}, {tag}"))
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
        before = (_entry(run, ref, suite, task) or {}).get("score")
        final = (_entry(run, tags[-1], suite, task) or {}).get("score")
        if _number(before) and _number(final):
            ratio = _fmt(final / before) if before else "-"
            rows.append([f"{suite} / {task}", _fmt(before), _fmt(final), f"{final - before:+.3f}", ratio])
    if not rows:
        return []
    return [Heading("Short-context regression"),
            Paragraph(f"Final model ({tags[-1]}) against the model before context extension ({ref}) on the "
                      "short-context suite; a ratio near 1 means the extension kept what the model could already do."),
            Table(["suite / task", ref, "final", "delta", f"final / {ref}"], rows)]


def rope_section(run: Run) -> list[Block]:
    blocks: list[Block] = []
    for suite, task in _tasks(run, "rope_compare"):
        found = _with(run, suite, task)
        names = list(dict.fromkeys(name for _, e in found for name in e["settings"]))
        rows = [[name, *(_fmt(e["settings"].get(name, {}).get("score")) for _, e in found),
                 json.dumps(next(e["settings"][name]["rope_parameters"] for _, e in found if name in e["settings"]),
                            separators=(",", ":"))] for name in names]
        lengths = sorted({int(n) for _, e in found for s in e["settings"].values() for n in s["scores_by_length"]})
        blocks += [Paragraph(f"{suite}/{task}: needle accuracy at {', '.join(map(str, lengths))} tokens, native "
                             f"length {found[-1][1].get('native_length')}, no fine-tuning for the setting."),
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
        pairs = dict.fromkeys((name, metric) for e in found.values()
                              for name, values in e["metrics"].items() for metric in values)
        rows += [[f"{suite} / {name}", metric, *(_fmt(found.get(tag, {}).get("metrics", {}).get(name, {}).get(metric))
                                                 for tag in tags)] for name, metric in pairs]
    return [Heading("lm-eval"), Table(["suite / task", "metric", *tags], rows)] if rows else []


_SECTIONS = (recipe_section, environment_section, training_section, scores_section, niah_section, ruler_section,
             short_context_section, rope_section, perplexity_section, lm_eval_section)


def build_report(run_dir: Path) -> None:
    """Write ``report.md``, ``report.html`` and the plots into ``run_dir``."""
    run = load_run(Path(run_dir))
    title = f"Run report: {run.recipe.get('name') or run.info.get('recipe') or run.folder.name}"
    blocks: list[Block] = [Heading(title, 1)]
    for section in _SECTIONS:
        blocks += section(run)
    (run.folder / "report.md").write_text(to_markdown(blocks, run.folder), encoding="utf-8")
    (run.folder / "report.html").write_text(to_html(blocks, title), encoding="utf-8")
