"""The run folder's layout: one tag format (made and parsed here), typed readers of what the runner writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.real_model import with_corpus_marks
from toolkit.errors import UserError
from toolkit.recipe.loading import dump_recipe, load_recipe
from toolkit.run_folder import (
    eval_tag,
    final_stage_tag,
    load_run,
    parse_stage_tag,
    read_metrics,
    read_run_info,
    stage_data,
    stage_tag,
    tag_order,
    typed_recipe,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_tags_round_trip_and_order() -> None:
    assert stage_tag(2, "yarn-1024") == "stage-2-yarn-1024"
    assert parse_stage_tag("stage-2-yarn-1024") == (2, "yarn-1024")
    assert parse_stage_tag("base") is None and parse_stage_tag("stage-x-y") is None
    tags = ["stage-10-c", "other", "stage-2-b", "base"]
    assert tag_order(tags) == ["base", "stage-2-b", "stage-10-c", "other"]
    assert final_stage_tag(tags) == "stage-10-c" and final_stage_tag(["base"]) is None


def test_eval_tag_of_a_recipe() -> None:
    recipe = load_recipe(RECIPES / "tiny-passkey.yaml", [])
    assert eval_tag(recipe, None) == "base"
    assert [eval_tag(recipe, i) for i in range(3)] == ["stage-0-copy-64", "stage-1-passkey-256", "stage-2-yarn-1024"]


@pytest.mark.parametrize("path", with_corpus_marks(sorted(RECIPES.glob("*.yaml"))), ids=lambda p: p.name)
def test_resolved_recipe_reads_typed(tmp_path: Path, path: Path) -> None:
    """Every shipped recipe, written out with all its defaults, reads back as the same typed recipe."""
    recipe = load_recipe(path, [])
    dump_recipe(recipe, tmp_path / "recipe.resolved.yaml")
    run = load_run(tmp_path)
    assert run.typed_recipe == recipe
    assert stage_data(run.recipe) == [recipe.train.stage_data(i) for i in range(len(recipe.train.stages))]


def test_partial_recipe_still_gives_stage_data() -> None:
    data = yaml.safe_load("train:\n  data: {task: multikey}\n  stages:\n  - {seq_len: 128, max_steps: 5}\n"
                          "  - {seq_len: 256, max_steps: 5, data: {source: hub, path: org/texts}}\n")
    assert typed_recipe(data) is None  # no model: not a complete recipe
    assert [(d.source, d.task, d.path) for d in stage_data(data)] == [("synthetic", "multikey", None),
                                                                      ("hub", "passkey", "org/texts")]
    assert stage_data({"train": {"stages": "nonsense"}}) == []


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such run folder"):
        load_run(tmp_path / "nope")
    assert read_run_info(tmp_path) == {}
    with pytest.raises(UserError, match="run_info.json: not found"):
        read_run_info(tmp_path, required=True)
    (tmp_path / "eval" / "base").mkdir(parents=True)
    (tmp_path / "eval" / "base" / "broken.json").write_text("{")
    (tmp_path / "eval" / "base" / "s.json").write_text(json.dumps({"suite": "s", "tasks": {}}))
    assert load_run(tmp_path).evals == {"base": {"s": {"suite": "s", "tasks": {}}}}


def test_metrics_leave_out_a_line_cut_off_by_a_killed_run(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 5, "loss": 2.0}\n\n{"step": 10, "loss": 1.5}\n{"step": 15, "lo')
    assert read_metrics(tmp_path) == [{"step": 5, "loss": 2.0}, {"step": 10, "loss": 1.5}]
    assert read_metrics(tmp_path / "missing") == []
