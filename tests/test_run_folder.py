"""The run folder's layout: one tag format (made and parsed here), typed readers of what the runner writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.real_model import with_corpus_marks
from toolkit.errors import UserError
from toolkit.evals.results import SuiteResults
from toolkit.recipe.loading import dump_recipe, load_recipe
from toolkit.run_folder import (
    Change,
    Resume,
    RunInfo,
    eval_tag,
    evaluations,
    final_stage_tag,
    load_run,
    parse_stage_tag,
    read_json,
    read_metrics,
    read_recipe,
    read_run_info,
    recipe_evaluations,
    stage_tag,
    tag_order,
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


@pytest.mark.parametrize("overrides,evaluated", [
    ([], {"stage-1-passkey-256": 1, "stage-2-yarn-1024": 2}),
    (["eval.before=true", "eval.after_each_stage=false"], {"base": None, "stage-2-yarn-1024": 2}),
    (["train.stages[0].evaluate=true", "train.stages[2].evaluate=false"],
     {"stage-0-copy-64": 0, "stage-1-passkey-256": 1, "stage-2-yarn-1024": 2}),
    (["eval.suites=[]", "eval.verdict=null", "eval.before=true"], {}),
], ids=["as-written", "before-and-last", "the-last-always", "no-suites"])
def test_the_evaluations_a_recipe_makes(overrides: list[str], evaluated: dict[str, int | None]) -> None:
    """What the runner evaluates (``Recipe.evaluates``) under the tags it writes, as the verdict reads them back."""
    recipe = load_recipe(RECIPES / "tiny-passkey.yaml", overrides)
    assert recipe_evaluations(recipe) == evaluated == evaluations(evaluated)


@pytest.mark.parametrize("path", with_corpus_marks(sorted(RECIPES.glob("*.yaml"))), ids=lambda p: p.name)
def test_resolved_recipe_reads_typed(tmp_path: Path, path: Path) -> None:
    """Every shipped recipe, written out with all its defaults, reads back as the same typed recipe."""
    recipe = load_recipe(path, [])
    dump_recipe(recipe, tmp_path / "recipe.resolved.yaml")
    assert load_run(tmp_path).recipe == recipe


def test_a_recipe_that_is_no_valid_recipe_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "recipe.resolved.yaml"
    path.write_text("name: x\ntrain:\n  stages:\n  - {seq_len: 128, max_steps: 5}\n")
    with pytest.raises(UserError) as caught:
        read_recipe(tmp_path)
    assert str(caught.value) == f"{path}: model: Field required"
    path.write_text("name: x\nmodel: {init_config: {}, train_tokenizer: {}}\ntrain: [1]\n")
    with pytest.raises(UserError, match=rf"^{path}:3: train: Input should be a valid dictionary"):
        read_recipe(tmp_path)


def test_run_info_reads_typed_and_tolerates_missing_keys(tmp_path: Path) -> None:
    (tmp_path / "run_info.json").write_text(json.dumps({
        "device": "cpu", "native_length": 64, "stages": [{"seq_len": 128}], "dropped_key": 1}))
    info = read_run_info(tmp_path)
    assert (info.device, info.native_length, info.attention, info.versions) == ("cpu", 64, None, {})
    assert (info.stages[0].seq_len, info.stages[0].rope_parameters) == (128, None)
    (tmp_path / "run_info.json").write_text('{"stages": [{"seq_len": "long"}]}')
    with pytest.raises(UserError, match=r"run_info.json: stages\[0\]\.seq_len: Input should be a valid integer"):
        read_run_info(tmp_path)
    (tmp_path / "run_info.json").write_text('{\n  "device": "cpu",\n')
    with pytest.raises(UserError, match=r"run_info.json:3: not valid JSON \(Expecting"):
        read_run_info(tmp_path)


def test_run_info_reads_resumes_of_older_runs_by_their_time(tmp_path: Path) -> None:
    """Older runs recorded each resume's time alone: it reads as a resume from a checkpoint and with changes not
    known, beside the entries that record them, and is written back in the new shape."""
    (tmp_path / "run_info.json").write_text(json.dumps({"resumed": [
        "2025-01-02T03:04:05+00:00", {"at": "2025-02-03T04:05:06+00:00", "stage": 1, "step": 4,
                                      "changed": [{"setting": "train.max_steps", "before": None, "after": 9}]}]}))
    info = read_run_info(tmp_path)
    assert info.resumed == [Resume(at="2025-01-02T03:04:05+00:00"), Resume(
        at="2025-02-03T04:05:06+00:00", stage=1, step=4,
        changed=[Change(setting="train.max_steps", before=None, after=9)])]
    assert (info.resumed[0].stage, info.resumed[0].step, info.resumed[0].changed) == (None, None, None)
    assert json.loads(info.model_dump_json())["resumed"][0] == {"at": "2025-01-02T03:04:05+00:00", "stage": None,
                                                                "step": None, "changed": None}
    (tmp_path / "run_info.json").write_text(json.dumps({"resumed": [{"stage": 1}]}))
    with pytest.raises(UserError, match=r"run_info.json: resumed\[0\]\.at: Field required"):
        read_run_info(tmp_path)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such run folder"):
        load_run(tmp_path / "nope")
    (tmp_path / "notes.md").write_text("kept")
    with pytest.raises(UserError, match=r"notes\.md: a file, not a run folder"):
        load_run(tmp_path / "notes.md")
    assert read_recipe(tmp_path) is None
    assert read_run_info(tmp_path) == RunInfo()
    with pytest.raises(UserError, match="run_info.json: not found"):
        read_run_info(tmp_path, required=True)
    (tmp_path / "eval" / "base").mkdir(parents=True)
    (tmp_path / "eval" / "base" / "broken.json").write_text("{")
    (tmp_path / "eval" / "base" / "eval_info.json").write_text('{"model": "m"}')  # no results file: no tasks
    (tmp_path / "eval" / "base" / "s.json").write_text(json.dumps({"suite": "s", "tasks": {}}))
    assert load_run(tmp_path).evals == {"base": {"s": {"suite": "s", "tasks": {}}}}


def test_metrics_leave_out_a_line_cut_off_by_a_killed_run(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"global_step": 5, "loss": 2.0}\n\n{"global_step": 10, "loss": 1.5}\n'
                                            '{"global_step": 15, "lo')
    assert read_metrics(tmp_path) == [{"global_step": 5, "loss": 2.0}, {"global_step": 10, "loss": 1.5}]
    assert read_metrics(tmp_path / "missing") == []


def test_metrics_name_a_complete_line_that_is_no_json_object(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"global_step": 5, "loss": 2.0}\n{"global_step": 10, loss}\n{"glo')
    with pytest.raises(UserError, match=rf"^{tmp_path / 'metrics.jsonl'}:2: not valid JSON \(Expecting"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"global_step": 5, "loss": 2.0}\n[5]\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2: expected a JSON object, got list$"):
        read_metrics(tmp_path)


@pytest.mark.parametrize(("row", "expected"), [
    ({"step": 10, "loss": 1.5}, "global_step: Field required"),
    ({"global_step": 10}, "loss: Field required"),
    ({"global_step": "10", "loss": 1.5}, "global_step: Input should be a valid integer"),
    ({"global_step": 10, "loss": 1.5, "tokens_per_s": None}, "tokens_per_s: Input should be a valid number"),
    ({"global_step": 10, "loss": 1.5, "source_tokens": {"web": 1.5}}, "source_tokens.web: Input should be a valid "
     "integer")])
def test_metrics_name_a_row_without_its_fields(row: dict, expected: str, tmp_path: Path) -> None:
    """A row edited by hand: the file, line and field at fault (the report read it as a traceback)."""
    first = {"global_step": 5, "loss": 2.0, "note": "kept"}  # a key of no field is kept
    (tmp_path / "metrics.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(UserError) as caught:
        read_metrics(tmp_path)
    assert str(caught.value) == f"{tmp_path / 'metrics.jsonl'}:2: {expected}"


@pytest.mark.parametrize(("suite", "expected"), [
    ({"tasks": []}, "tasks: Input should be a valid dictionary"),
    ({"tasks": {"t": [1]}}, "tasks.t: Input should be a valid dictionary"),
    ({"tasks": {"t": {"score": 0.5}}}, "tasks.t.type: Field required"),
    ({"tasks": {"t": {"type": "niah", "score": "0.5"}}}, "tasks.t.score: Input should be a valid number"),
    ({"tasks": {"t": {"type": "niah", "correct_by_length": {"256": "9"}}}},
     "tasks.t.correct_by_length.256: Input should be a valid integer"),
    ({"suite": 5, "tasks": {}}, "suite: Input should be a valid string")])
def test_a_results_file_without_its_fields_names_the_file_and_field(suite: dict, expected: str,
                                                                     tmp_path: Path) -> None:
    path = tmp_path / "eval" / "base" / "s.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(suite))
    with pytest.raises(UserError) as caught:
        load_run(tmp_path)
    assert str(caught.value) == f"{path}: {expected}"
    with pytest.raises(UserError) as resumed:  # an evaluation resuming from the file reads it the same way
        SuiteResults(path, "s", "base", "m", "fingerprint")
    assert str(resumed.value) == str(caught.value)


def test_files_that_are_not_utf8_are_one_line_or_unreadable(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 5, "note": "\xe9"}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl: not UTF-8 text \(byte 21"):
        read_metrics(tmp_path)
    (tmp_path / "s.json").write_bytes(b'{"tasks": {"\xe9": 1}}')
    assert read_json(tmp_path / "s.json") is None  # as a missing or damaged results file
