"""A recipe whose verdict (eval.verdict) its evaluations cannot give is refused before training, by ``validate`` and
``train``, with one line naming the field: the rules are the verdict's own (``toolkit.run_folder.verdict_models``,
``verdict_lengths``), so the check and ``compute_verdict`` cannot disagree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import MICRO_RECIPE, write_recipe
from tests.runs import needle_suite
from tests.test_user_errors import _error
from toolkit.cli import main
from toolkit.errors import UserError
from toolkit.evals.suite import Suite, load_suites
from toolkit.recipe import loading
from toolkit.recipe.loading import check_verdict_at_native, check_verdict_evaluations, load_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny-passkey.yaml"  # native 256 (init_config); stages 64 (not evaluated), 256, 1024


def _suite(folder: Path, lengths: list[int]) -> Path:
    path = folder / "qa.yaml"
    path.write_text(f"name: qa-tiny\ntasks:\n  - {{type: niah, name: passkey, lengths: {lengths}, depths: [0.0, 1.0], "
                    "samples: 2}\n")
    return path


def _validate(folder: Path, lengths: list[int], *overrides: str) -> list[str]:
    """``validate`` of the tiny recipe judged on a suite of needles at ``lengths``."""
    return ["validate", str(TINY), "--set", f"eval.suites=[{_suite(folder, lengths)}]", "--set",
            "eval.verdict.task=qa-tiny/passkey", "--set", "eval.verdict.retention_suites=[]",
            *(arg for override in overrides for arg in ("--set", override))]


def test_a_grid_without_the_last_stages_length(tmp_path: Path, capsys) -> None:
    assert _error(_validate(tmp_path, [128, 256]), capsys) == (
        f"{TINY}: eval.verdict.task: qa-tiny/passkey has no length 1024 (grid: 128, 256), the last stage's seq_len")


def test_a_grid_without_the_native_length(tmp_path: Path, capsys) -> None:
    assert _error(_validate(tmp_path, [128, 1024]), capsys) == (
        f"{TINY}: eval.verdict.task: qa-tiny/passkey has no length 256 (grid: 128, 1024), the native length")


def test_extended_before_max_reads_the_last_length_before_extension(tmp_path: Path, capsys) -> None:
    """The grid holds the last stage's length, so the final model's and the one before extension's are there."""
    assert main(_validate(tmp_path, [256, 1024], "eval.verdict.extended_before_max=0.3")) == 0
    capsys.readouterr()


def test_no_stage_before_the_extension_is_evaluated(tmp_path: Path, capsys) -> None:
    assert _error(_validate(tmp_path, [256, 1024], "train.stages.1.evaluate=false"), capsys) == (
        f"{TINY}: eval.verdict: no evaluation of the model before extension (eval.before: false, "
        "train.stages[0].evaluate: false, train.stages[1].evaluate: false)")


def test_no_evaluation_after_each_stage(tmp_path: Path, capsys) -> None:
    assert _error(_validate(tmp_path, [256, 1024], "eval.after_each_stage=false"), capsys) == (
        f"{TINY}: eval.verdict: no evaluation of the model before extension (eval.before: false, "
        "train.stages[0].evaluate: false, eval.after_each_stage: false)")


def test_the_starting_model_is_a_reference_too(tmp_path: Path, capsys) -> None:
    """With ``eval.before`` the starting model is the one before extension when no stage within it is evaluated."""
    assert main(_validate(tmp_path, [256, 1024], "eval.after_each_stage=false", "eval.before=true")) == 0
    assert main(_validate(tmp_path, [256, 1024])) == 0
    assert capsys.readouterr().out == f"{TINY}: ok\n" * 2


def test_the_native_length_from_the_models_config(tmp_path: Path) -> None:
    """What ``train`` checks once the model's config gives the native length (``validate`` knows it only from
    ``init_config``): with none, only the last stage's length; a native length that no stage extends leaves no model
    before extension."""
    recipe = load_recipe(TINY, [f"eval.suites=[{_suite(tmp_path, [128, 1024])}]", "eval.verdict.task=qa-tiny/passkey",
                                "eval.verdict.retention_suites=[]", "model.init_config.max_position_embeddings=null"])
    suites = load_suites(recipe.eval.suites, str)
    check_verdict_evaluations(recipe, suites, None)
    with pytest.raises(UserError, match=r"^eval.verdict.task: qa-tiny/passkey has no length 256 \(grid: 128, 1024\), "
                                        r"the native length$"):
        check_verdict_evaluations(recipe, suites, 256)
    with pytest.raises(UserError, match=r"^eval.verdict: no stage extends the context: the last stage's seq_len 1024 "
                                        "is within the native length 2048, so there is no model before extension"):
        check_verdict_evaluations(recipe, suites, 2048)


def test_train_checks_the_native_length_of_the_built_model(tmp_path: Path, capsys) -> None:
    """An ``init_config`` without ``max_position_embeddings`` (LlamaConfig's 2048): ``validate`` cannot tell, ``train``
    refuses before the model loads and leaves no run folder."""
    init = {k: v for k, v in MICRO_RECIPE["model"]["init_config"].items() if k != "max_position_embeddings"}
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, model=dict(MICRO_RECIPE["model"], init_config=init),
                                         output={"dir": str(tmp_path / "run")},
                                         eval={"suites": [str(needle_suite(tmp_path))],
                                               "verdict": {"task": "needles/passkey", "retention_suites": []}}))
    assert main(["validate", str(recipe)]) == 0
    assert _error(["train", str(recipe)], capsys).endswith(
        "eval.verdict: no stage extends the context: the last stage's seq_len 128 is within the native length 2048, "
        "so there is no model before extension to compare with")
    assert not (tmp_path / "run").exists()


def test_train_reads_the_suites_again_only_for_a_native_length_the_recipe_did_not_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe's own check read them at the length its ``init_config`` states (256): the same check at that length
    is not made twice; at a length the built model gives otherwise, it is."""
    recipe = load_recipe(TINY, [f"eval.suites=[{_suite(tmp_path, [256, 1024])}]", "eval.verdict.task=qa-tiny/passkey",
                                "eval.verdict.retention_suites=[]"])
    read: list[Path] = []

    def reading(paths: list[Path], label: Callable[[int], str]) -> list[Suite]:
        read.extend(paths)
        return load_suites(paths, label)

    monkeypatch.setattr(loading, "load_suites", reading)
    check_verdict_at_native(recipe, 256)
    assert read == []
    with pytest.raises(UserError, match=r"^eval.verdict: no stage extends the context: the last stage's seq_len 1024 "
                                        "is within the native length 2048"):
        check_verdict_at_native(recipe, 2048)
    assert len(read) == 1
