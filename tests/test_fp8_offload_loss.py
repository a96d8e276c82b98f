"""``benchmarks/fp8_offload_loss.py``: the recipe it trains, one real run of the CLI with fp8 offload, its statistics
and its plot."""

from __future__ import annotations

import math

import pytest

from benchmarks.fp8_offload_loss import SeedResult, main, plot, stage_overrides, summary, train
from toolkit.errors import UserError
from toolkit.recipe.loading import dump_recipe, load_recipe

TINY = "recipes/tiny-passkey.yaml"


def test_the_overrides_train_one_stage_with_every_layer_offloaded_and_no_evaluation() -> None:
    overrides = stage_overrides(TINY, "passkey-256", 7) + ["train.activation_offload_dtype=fp8", "seed=3"]
    recipe = load_recipe(TINY, overrides)
    [stage] = recipe.train.stages
    assert (stage.name, stage.seq_len, stage.max_steps, stage.batch_size) == ("passkey-256", 256, 7, 16)
    train = recipe.train
    assert train.gradient_checkpointing and train.activation_offload is True
    assert train.activation_offload_dtype == "fp8" and train.save_every is None and recipe.seed == 3
    assert recipe.eval.suites == [] and recipe.eval.verdict is None and recipe.logging.every == 1
    assert load_recipe(TINY, stage_overrides(TINY, "0", 5)).train.stages[0].name == "copy-64"


def test_a_stage_without_a_name_goes_by_its_default_name(tmp_path) -> None:
    recipe = load_recipe(TINY)
    for stage in recipe.train.stages:
        stage.name = None
    path = tmp_path / "unnamed.yaml"
    dump_recipe(recipe, path)
    [stage] = load_recipe(path, stage_overrides(path, "stage-1", 3)).train.stages
    assert (stage.name, stage.seq_len, stage.max_steps) == ("stage-1", 256, 3)


def test_an_unknown_stage_is_one_line_naming_the_stages(capsys) -> None:
    with pytest.raises(UserError, match=r"--stage nope: .*'copy-64', 'passkey-256', 'yarn-1024'"):
        stage_overrides(TINY, "nope", 5)
    with pytest.raises(SystemExit) as stop:
        main(["--stage", "9", "--out", "unused"])
    assert stop.value.code == 2 and "--stage 9" in capsys.readouterr().err


def test_the_cli_trains_with_fp8_offload_and_logs_every_step(tmp_path) -> None:
    """The forward pass is the same either way (step 1's loss is equal); fp8 inputs change the backward pass, so
    step 2 differs, a little."""
    overrides = stage_overrides(TINY, "0", 2)
    native = train(TINY, overrides, tmp_path / "native")
    fp8 = train(TINY, overrides + ["train.activation_offload_dtype=fp8"], tmp_path / "fp8")
    assert len(fp8) == 2 and all(math.isfinite(x) and 5 < x < 7 for x in fp8)  # ln(512) = 6.24 at the start
    assert fp8[0] == native[0] and 0 < abs(fp8[1] - native[1]) < 0.05, (native, fp8)


def test_the_gap_is_set_against_the_seeds_spread(tmp_path) -> None:
    steps = 12
    results = [SeedResult(0, [4.0] * steps, [4.0] + [4.1] * (steps - 1)),
               SeedResult(1, [5.0] * steps, [5.0] + [4.9] * (steps - 1))]
    assert results[0].first_step_gap == 0 and results[0].final_gap == pytest.approx(0.1)
    assert results[1].mean_relative_gap == pytest.approx(0.1 / 5 * 11 / 12)
    totals = summary(results)
    assert totals["final_gap_mean"] == pytest.approx(0.0)
    assert totals["seed_spread_final"] == pytest.approx(math.sqrt(0.5))
    low, high = totals["final_gap_ci95"]  # the gaps 0.1 and -0.1: t(0.975, 1) x s / sqrt(2)
    assert (low, high) == pytest.approx((-12.706 * 0.1, 12.706 * 0.1), rel=1e-4)
    assert plot(results, "fake", tmp_path / "gap.png").read_bytes().startswith(b"\x89PNG")
