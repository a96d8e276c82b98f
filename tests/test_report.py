"""The report builds from a run folder (full or partial): Markdown + self-contained HTML with embedded plots."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_evals_fixtures import Oracle, tiny_tokenizer
from toolkit.cli import main
from toolkit.errors import UserError
from toolkit.evals.api import run_suites
from toolkit.report.report import build_report

PNG = b"\x89PNG\r\n\x1a\n"


def _suite_json(folder: Path, suite: str, tag: str, tasks: dict) -> None:
    """A suite's results, every task finished (``complete``, as the evaluation records it)."""
    folder.mkdir(parents=True, exist_ok=True)
    finished = {key: {**entry, "complete": True} for key, entry in tasks.items()}
    (folder / f"{suite}.json").write_text(json.dumps({"suite": suite, "tag": tag, "model": "m", "tasks": finished}))


def _tasks(level: float) -> dict:
    """Results of one tag in the shared layout; ``level`` scales the scores."""
    return {
        "ruler": {"type": "ruler", "score": level * 0.8, "effective_length": 512 if level > 0.5 else None,
                  "threshold": 0.856, "scores_by_length": {"256": level, "512": level * 0.9, "1024": level * 0.5}},
        "rope": {"type": "rope_compare", "score": None, "native_length": 256, "best": "yarn", "settings": {
            "none": {"score": 0.05 * level, "scores_by_length": {"1024": 0.05},
                     "rope_parameters": {"rope_type": "default"}},
            "yarn": {"score": round(88 * level) / 100, "scores_by_length": {"1024": round(88 * level) / 100},
                     "n_by_length": {"1024": 100}, "correct_by_length": {"1024": round(88 * level)},
                     "rope_parameters": {"rope_type": "yarn", "factor": 4.0}}}},
        "ppl": {"type": "perplexity", "score": None, "loss_by_bucket": {"0": 3.0, "128": 2.5 + level},
                "mean_loss": 2.75, "perplexity": 15.6},
    }


def _run_folder(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    recipe = {"name": "tiny", "description": "A tiny test run.",
              "model": {"init_config": {"hidden_size": 64}, "train_tokenizer": {}},
              "method": {"kind": "full"}, "train": {"stages": [
                  {"name": "base-256", "seq_len": 256, "rope": {"type": "default"}, "max_steps": 3, "lr": 0.003},
                  {"name": "yarn-1024", "seq_len": 1024, "rope": {"type": "yarn", "factor": 4.0}, "max_steps": 2,
                   "lr": 0.001}]}}
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    (run / "run_info.json").write_text(json.dumps({
        "recipe": "tiny", "method": "full", "device": "cpu", "precision": "fp32", "attention": "sdpa",
        "attention_reason": "flash-attn needs CUDA", "versions": {"torch": "2.13.0", "transformers": "5.17.0"},
        "base_model": "init_config", "stages": [
            {"name": "base-256", "seq_len": 256, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
             "max_position_embeddings": 256, "steps": 3},
            {"name": "yarn-1024", "seq_len": 1024, "rope_parameters": {"rope_type": "yarn", "factor": 4.0},
             "max_position_embeddings": 1024, "steps": 2}]}))
    rows = [{"stage": s, "stage_name": name, "step": i, "global_step": g, "loss": 5.0 - g, "lr": 1e-3,
             "tokens_per_s": 1000.0 * g, "real_tokens_per_s": 800.0 * g, "peak_memory_gib": 1.5 + 0.25 * g,
             "elapsed_s": 0.5 * g, "seq_len": 256 * 4 ** s}
            for g, (s, name, i) in enumerate([(0, "base-256", 1), (0, "base-256", 2), (0, "base-256", 3),
                                              (1, "yarn-1024", 1), (1, "yarn-1024", 2)], start=1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for tag, level in (("base", 0.2), ("stage-0-base-256", 0.6), ("stage-1-yarn-1024", 1.0)):
        _suite_json(run / "eval" / tag, "extra", tag, _tasks(level))
        counts = {"n": {"longctx_passkey_short": 40}} if tag != "base" else {}  # base: recorded without counts
        _suite_json(run / "eval" / tag, "short-context", tag, {
            "passkey_short": {"type": "lm_eval", "score": 0.5 + level / 4, **counts, "metrics": {
                "longctx_passkey_short": {"acc,none": 0.5 + level / 4}}}})
    grid = tmp_path / "grid.yaml"  # real needle results, written by the evaluation itself
    grid.write_text("name: niah-tiny\ntasks:\n  - {type: niah, name: multikey, lengths: [128, 256], depths: [0.0, 1.0],"
                    " samples: 1, num_needles: 2}\n")
    for tag in ("base", "stage-1-yarn-1024"):
        run_suites(Oracle(vocab=len(tiny_tokenizer())), tiny_tokenizer(), [str(grid)], run / "eval", tag, "oracle")
    return run


def _embedded_images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_full_report(tmp_path: Path):
    run = _run_folder(tmp_path)
    build_report(run)
    md = (run / "report.md").read_text()
    page = (run / "report.html").read_text()
    assert md.startswith("# Run report: tiny")
    assert "| base-256 | 256 | type=default | 3 | 0.003000 | 1 x 1 |" in md
    assert "attention: sdpa (flash-attn needs CUDA)" in md and "torch 2.13.0" in md
    assert '{"rope_type":"yarn","factor":4.0}' in md
    # training table: steps, losses, mean tokens/s, mean real (non-padding) tokens/s, peak memory, time
    assert "| base-256 | 3 | 4.000 | 2.000 | 2000 | 1600 | 2.25 | 1.5 |" in md
    assert "| extra / ruler | 0.16 (n unknown) | 0.48 (n unknown) | 0.80 (n unknown) | +0.64 |" in md  # final - base
    assert "| niah-tiny / multikey | 1.00 [0.51, 1.00] n=4 | - | 1.00 [0.51, 1.00] n=4 | +0.00 [-0.49, +0.49] |" in md
    assert "| stage-1-yarn-1024 | 512 | 0.800 |" in md and "| base | - | 0.160 |" in md  # effective lengths
    assert "| short-context / passkey_short | 0.55 (n unknown) | 0.75 [0.60, 0.86] n=40 | +0.20 | 1.36 |" in md
    assert "| yarn | 0.18 [0.12, 0.27] n=100 | 0.53 [0.43, 0.62] n=100 | 0.88 [0.80, 0.93] n=100 |" in md  # RoPE
    assert "| none | 0.01 (n unknown) |" in md
    assert ("| short-context / longctx_passkey_short | acc,none | 0.55 (n unknown) | 0.65 [0.50, 0.78] n=40 "
            "| 0.75 [0.60, 0.86] n=40 |") in md
    assert "| stage-1-yarn-1024 | 1.00 [0.34, 1.00] | 1.00 [0.34, 1.00] |" in md  # needle accuracy by length
    assert "n=2 prompts per length" in md
    for png in ("training.png", "niah-niah-tiny-multikey.png", "ruler-extra-ruler.png", "perplexity-extra-ppl.png"):
        assert (run / png).read_bytes().startswith(PNG), png
        assert f"]({png})" in md
    assert not list(run.glob("niah-*-base.png"))  # before and after share one figure
    images = _embedded_images(page)
    assert len(images) == 4 and all(image.startswith(PNG) for image in images)
    assert "<table>" in page and "src=\"training.png\"" not in page  # nothing but the HTML file is needed


def test_the_recipe_table_gives_the_steps_train_max_steps_leaves(tmp_path: Path) -> None:
    """A quick trial (``train.max_steps=2``) caps every stage: the table says so beside the stage's own budget."""
    run = _run_folder(tmp_path)
    recipe = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    recipe["train"]["max_steps"] = 2
    recipe["train"]["stages"][1] = {**recipe["train"]["stages"][1], "max_steps": None, "max_tokens": 4096}
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    info = json.loads((run / "run_info.json").read_text())
    info["stages"][0]["steps"] = 2  # as the run records them
    (run / "run_info.json").write_text(json.dumps(info))
    build_report(run)
    md = (run / "report.md").read_text()
    assert "| base-256 | 256 | type=default | 2 (train.max_steps; the stage's 3) | 0.003000 | 1 x 1 |" in md
    assert "| 2 (4096 tokens) |" in md


def test_the_recipe_section_lists_each_resume_with_the_settings_it_changed(tmp_path: Path) -> None:
    """One line per resume below the recipe (which shows the latest values): where it continued from and each setting
    it changed with both values; an older run's entry (its time alone), and one without a record to compare, say what
    is not known."""
    run = _run_folder(tmp_path)
    info = json.loads((run / "run_info.json").read_text())
    info["resumed"] = ["2025-01-02T03:04:05+00:00",
                       {"at": "2025-02-03T04:05:06+00:00", "stage": 0, "step": 2, "changed": [
                           {"setting": "train.max_steps", "before": 100, "after": 200},
                           {"setting": "model.attention", "before": "auto", "after": "eager"}]},
                       {"at": "2025-03-04T05:06:07+00:00", "stage": 1, "step": 1, "changed": []},
                       {"at": "2025-04-05T06:07:08+00:00", "stage": 1, "step": 2}]
    (run / "run_info.json").write_text(json.dumps(info))
    build_report(run)
    md = (run / "report.md").read_text()
    recipe = md[md.index("## Recipe"):md.index("## Environment")]
    assert [line for line in recipe.splitlines() if line.startswith("Resumed")] == [
        "Resumed 2025-01-02T03:04:05+00:00: the settings it changed are not recorded.",
        "Resumed at stage 0 step 2 (2025-02-03T04:05:06+00:00): train.max_steps 100 -> 200; model.attention 'auto' "
        "-> 'eager'.",
        "Resumed at stage 1 step 1 (2025-03-04T05:06:07+00:00): no setting changed.",
        "Resumed at stage 1 step 2 (2025-04-05T06:07:08+00:00): the settings it changed are not recorded."]
    assert "<p>Resumed at stage 0 step 2 (2025-02-03T04:05:06+00:00): train.max_steps 100 -&gt; 200; " \
           "model.attention &#x27;auto&#x27; -&gt; &#x27;eager&#x27;.</p>" in (run / "report.html").read_text()


def test_an_interrupted_ruler_or_rope_comparison_is_left_out_of_their_sections(tmp_path: Path) -> None:
    from toolkit.evals.results import SuiteResults
    from toolkit.evals.rope_compare import RopeCompareTask
    from toolkit.evals.ruler import RulerTask

    run = _run_folder(tmp_path)
    final = "stage-1-yarn-1024"  # its evaluation stopped midway: the progress saved after the first batch
    results = SuiteResults(run / "eval" / final / "extra.json", "extra", final, "m", "fingerprint")
    ruler = RulerTask(type="ruler", tasks=["niah_single"], lengths=[256])
    results.record(ruler, [{"task": "niah_single", "length": 256, "sample": 0, "score": 1.0}])
    rope = RopeCompareTask(type="rope_compare", name="rope", lengths=[1024],
                           settings={"yarn": {"type": "yarn", "factor": 4.0}})
    results.record(rope, [{"length": 1024, "depth": 0.5, "sample": 0, "correct": True, "setting": "yarn"}])
    assert {key: entry["complete"] for key, entry in results.data["tasks"].items()} == {"ruler": False, "rope": False}
    build_report(run)
    md = (run / "report.md").read_text()
    assert "| extra / ruler | 0.16 (n unknown) | 0.48 (n unknown) | - | - |" in md  # no score yet, no difference
    assert "| stage-0-base-256 | 512 | 0.480 |" in md and f"| {final} | 512" not in md  # RULER: the finished tags
    assert "| RoPE setting | base | stage-0-base-256 | parameters |" in md
    assert '| yarn | 0.18 [0.12, 0.27] n=100 | 0.53 [0.43, 0.62] n=100 | {"rope_type":"yarn","factor":4.0} |' in md


def test_a_gpu_runs_environment_names_its_memory_allocator(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    info = json.loads((run / "run_info.json").read_text())
    build_report(run)
    md = (run / "report.md").read_text()
    assert "allocator" not in md and "Toolkit commit: not recorded." in md  # on the CPU it shapes no figure
    info.update(device="NVIDIA H200 (CUDA 13.0)", allocator="PYTORCH_ALLOC_CONF=expandable_segments:True",
                commit="0123456789ab-dirty")
    (run / "run_info.json").write_text(json.dumps(info))
    build_report(run)
    md = (run / "report.md").read_text()
    assert ("attention: sdpa (flash-attn needs CUDA); GPU memory allocator: PYTORCH_ALLOC_CONF=expandable_segments:"
            "True. Versions:") in md and "Toolkit commit: 0123456789ab-dirty." in md


def test_partial_run_still_renders(tmp_path: Path):
    """A run stopped once it had written its recipe (training's first file): no metrics, no evaluations."""
    run = tmp_path / "bare"
    run.mkdir()
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump({
        "name": "bare", "model": {"init_config": {"hidden_size": 64}, "train_tokenizer": {}},
        "train": {"stages": [{"name": "base-256", "seq_len": 256, "max_steps": 3}]}}))
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    assert "No metrics.jsonl in this run." in md and "No evaluation results in eval/." in md
    assert _embedded_images((run / "report.html").read_text()) == []


def test_missing_run_folder_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="no such run folder"):
        build_report(tmp_path / "nope")
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_reference_is_the_last_model_before_context_extension(tmp_path) -> None:
    from toolkit.run_folder import Run, RunInfo, StageInfo

    evals: dict[str, dict[str, Any]] = {tag: {} for tag in ("base", "stage-0-short", "stage-1-long")}
    from_scratch = RunInfo(native_length=256, stages=[StageInfo(seq_len=256), StageInfo(seq_len=1024)])
    assert Run(tmp_path, None, from_scratch, [], evals).reference == "stage-0-short"
    extended_only = RunInfo(native_length=8192, stages=[StageInfo(seq_len=32768), StageInfo(seq_len=65536)])
    assert Run(tmp_path, None, extended_only, [], evals).reference == "base"


def test_lm_eval_counts_from_the_raw_lm_eval_json(tmp_path: Path) -> None:
    from toolkit.report.cells import score_cell
    from toolkit.run_folder import load_run

    run = tmp_path / "run"
    (run / "eval" / "base" / "lm_eval").mkdir(parents=True)
    (run / "eval" / "base" / "lm_eval" / "short.json").write_text(json.dumps(
        {"n-samples": {"t": {"original": 50, "effective": 40}}}))
    entry = {"type": "lm_eval", "score": 0.75, "metrics": {"t": {"acc,none": 0.75}},
             "lm_eval_json": "lm_eval/short.json", "identity": {"metric": "acc"}}
    assert score_cell(load_run(run), "base", entry) == "0.75 [0.60, 0.86] n=40"
    ppl = {**entry, "score": 9.5, "metrics": {"t": {"word_perplexity,none": 9.5}}, "identity": {}}
    assert score_cell(load_run(run), "base", ppl) == "9.500"  # not a fraction: no interval


def test_wide_content_stays_inside_the_html_page(tmp_path: Path) -> None:
    from toolkit.formatting.blocks import Code, Paragraph, Table, to_html, to_markdown

    wide = json.dumps({f"key{i}": list(range(20)) for i in range(20)}, separators=(",", ":"))
    page = to_html([Paragraph(wide), Table(["json"], [[wide]]), Code("x" * 400, "pass")], "t")
    assert '<div class="scroll"><table>' in page and '<pre class="pass">' in page
    assert "overflow-wrap:anywhere" in page and "pre{white-space:pre-wrap" in page
    assert to_markdown([Code("a\nb")], tmp_path) == "```text\na\nb\n```\n"


def test_a_plot_replaces_its_file_whole_in_the_format_its_suffix_names(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    from toolkit.evals.plots import save_figure

    fig = Figure()
    fig.subplots().plot([0, 1])
    path = tmp_path / "plot.png"
    path.write_bytes(b"earlier")

    def fails_midway(self: Figure, fname: Path, **kwargs: Any) -> None:
        Path(fname).write_bytes(PNG)
        raise OSError("No space left on device")

    monkeypatch.setattr(Figure, "savefig", fails_midway)
    with pytest.raises(OSError):
        save_figure(fig, path)
    assert path.read_bytes() == b"earlier" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]
    monkeypatch.undo()
    save_figure(fig, path)
    save_figure(fig, tmp_path / "plot.svg")
    assert path.read_bytes().startswith(PNG) and (tmp_path / "plot.svg").read_text().startswith("<?xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "plot.svg"]
