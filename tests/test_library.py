"""The toolkit as a library (``toolkit.library``): a recipe loaded and changed in Python trains like the same change
given on the command line, evaluating its final model scores what the run scored after its last stage, and its
verdict and report come from the same functions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.conftest import MICRO_RECIPE, write_recipe
from tests.runs import ROOT, final_weights, metrics, needle_suite, train
from toolkit import library, runner
from toolkit.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("library")
    recipe_path = write_recipe(folder, dict(MICRO_RECIPE, eval={"suites": [str(needle_suite(folder))]}))
    recipe = library.load_recipe(recipe_path, [f"output.dir={folder / 'python'}"])
    recipe.train.stages[1].max_steps = 2
    assert library.train(recipe) == folder / "python"
    assert train(recipe_path, f"output.dir={folder / 'cli'}", "train.stages[1].max_steps=2") == 0
    return {"python": folder / "python", "cli": folder / "cli", "suite": folder / "needles.yaml"}


def test_a_recipe_changed_in_python_trains_like_the_same_override(runs: dict[str, Path]) -> None:
    python, cli = metrics(runs["python"]), metrics(runs["cli"])
    assert [row["loss"] for row in python if "loss" in row] == [row["loss"] for row in cli if "loss" in row]
    assert max(row["step"] for row in python if row.get("stage") == 1) == 2
    python_weights, cli_weights = final_weights(runs["python"]), final_weights(runs["cli"])
    assert all((python_weights[key] == cli_weights[key]).all() for key in cli_weights)


def test_evaluating_the_final_model_scores_what_the_run_scored_last(runs: dict[str, Path], tmp_path: Path) -> None:
    evaluation = library.evaluate(str(runs["python"] / "final"), [str(runs["suite"])], out=tmp_path / "eval")
    assert evaluation.folder == tmp_path / "eval" and evaluation.info["device"] == "cpu"
    last = sorted((runs["python"] / "eval").iterdir())[-1]
    in_run = json.loads((last / "needles.json").read_text())["tasks"]
    scores = evaluation.results["needles"]["tasks"]
    passkey = scores["passkey"]
    assert passkey["scores_by_length"] == in_run["passkey"]["scores_by_length"] and passkey["n"] == 8
    assert scores["loss"]["loss_by_bucket"] == pytest.approx(in_run["loss"]["loss_by_bucket"], abs=1e-6)
    assert json.loads((tmp_path / "eval" / "needles.json").read_text())["tasks"] == scores


def test_a_user_mistake_raises_user_error_naming_the_field(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, MICRO_RECIPE)
    with pytest.raises(library.UserError, match=r"train\.stages\[0\]\.seq_len"):
        library.load_recipe(recipe, ["train.stages[0].seq_len=0"])
    loaded = library.load_recipe(recipe)
    with pytest.raises(ValidationError) as assigned:  # pydantic's, a ValueError (docs/library.md)
        loaded.train.stages[0].seq_len = 0
    assert isinstance(assigned.value, ValueError) and assigned.value.title == "StageSpec"
    assert [(error["loc"], error["msg"]) for error in assigned.value.errors()] == [
        (("seq_len",), "Input should be greater than 0")]


@pytest.mark.parametrize("seq_len", [8, 8192])  # shorter than stage 0's 64; longer than stage 2's 1024
@pytest.mark.parametrize("entry", ["train", "plan"])
def test_a_recipe_changed_in_python_is_checked_across_fields_before_any_model(
        entry: str, seq_len: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An assignment checks its field alone; ``train`` and ``plan`` check the stages against each other again."""
    monkeypatch.setattr(runner, "setup", lambda recipe: pytest.fail("the run started"))
    recipe = library.load_recipe(ROOT / "recipes" / "tiny-passkey.yaml", [f"output.dir={tmp_path / 'run'}"])
    recipe.train.stages[1].seq_len = seq_len  # accepted: the field alone is valid
    with pytest.raises(library.UserError, match=r"^recipe: train\.stages\[[12]\]\.seq_len: \d+ is shorter than "):
        library.train(recipe) if entry == "train" else library.plan(recipe, gpus=1, gpu_memory_gib=80)
    assert not (tmp_path / "run").exists()


def test_the_plan_is_what_the_plan_command_prints(capsys) -> None:
    recipe = library.load_recipe(ROOT / "recipes" / "llama3-8b-prolong-512k.yaml")
    result = library.plan(recipe, gpus=8, gpu_memory_gib=141, host_memory_gib=128)
    assert main(["plan", str(ROOT / "recipes" / "llama3-8b-prolong-512k.yaml"), "--gpus", "8", "--gpu-memory", "141",
                 "--host-memory", "128"]) == 1  # the 512K stage's 8 processes do not fit 128 GiB of host memory
    printed = capsys.readouterr().out.splitlines()
    totals = next(line for line in printed if line.startswith("total per GPU (GiB)")).split()[4:]
    assert totals == [f"{stage.estimate.total / 2**30:,.2f}" for stage in result.fits]  # 28.63, 36.12, 28.63
    assert [stage.gpu_fits for stage in result.fits] == [True, True, True]
    assert [stage.host_fits for stage in result.fits] == [True, False, True]
    assert f"verdict: {result.fitting_stages} of 3 stage(s) fit the GPU and the host" in printed
