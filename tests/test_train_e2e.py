"""End to end through the real CLI on a micro Llama: loss falls, RoPE lands in final/, resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from tests.runs import StopAfter, assert_same_weights, final_weights, metrics, train
from toolkit.cli import main
from toolkit.environment import source_commit
from toolkit.run_folder import TENSORBOARD


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_full_two_stages_loss_falls_and_rope_lands(micro_recipe: Path) -> None:
    run = micro_recipe.parent / "run"
    assert train(micro_recipe) == 0
    records = metrics(run)
    first = [r["loss"] for r in records if r["stage"] == 0]
    assert len(first) == 6 and _mean(first[-2:]) < 0.9 * _mean(first[:2]), first
    assert [r["global_step"] for r in records] == list(range(1, 11))
    for stage, step_tokens in ((0, 64 * 4), (1, 128 * 2 * 2)):  # seq_len x batch_size x grad_accum
        rows = [r for r in records if r["stage"] == stage]
        real = [r["real_tokens_per_s"] / r["tokens_per_s"] * step_tokens for r in rows]  # the same seconds
        assert all(0 < n < step_tokens for n in real), real  # padding fills the rows' tails
        assert sum(real) == pytest.approx(sum(rows[-1]["source_tokens"].values()), rel=1e-9)  # the stage's tokens
    peaks = [r["peak_memory_gib"] for r in records]
    assert 0.1 < peaks[0] < 16 and peaks == sorted(peaks), peaks  # CPU: the process's peak resident memory
    config = json.loads((run / "final" / "config.json").read_text())
    assert config["max_position_embeddings"] == 128
    assert config["rope_parameters"]["rope_type"] == "yarn"
    assert config["rope_parameters"]["factor"] == 2.0
    assert config["rope_parameters"]["original_max_position_embeddings"] == 64
    reloaded = AutoModelForCausalLM.from_pretrained(run / "final")
    assert reloaded.config.rope_parameters["rope_type"] == "yarn"
    info = json.loads((run / "run_info.json").read_text())
    assert info["attention"] == "sdpa" and [s["seq_len"] for s in info["stages"]] == [64, 128]
    assert info["commit"] == source_commit()  # the checkout's, as the report and `make summary` state it
    assert (run / "recipe.resolved.yaml").is_file()


def test_lora_trains_adapter_and_trainable_modules(micro_recipe: Path, monkeypatch) -> None:
    from tests.fake_hub import assert_no_secret

    secret = "hf_" + "x7Q" * 12
    monkeypatch.setenv("HF_TOKEN", secret)
    run = micro_recipe.parent / "run"
    assert train(micro_recipe, "method.kind=lora", "method.lora.r=8",
                 "method.lora.trainable_modules=[embed_tokens, norm]",
                 "stages[0].lr=1e-2", "stages[0].max_steps=8") == 0
    losses = [r["loss"] for r in metrics(run) if r["stage"] == 0]
    assert _mean(losses[-2:]) < 0.95 * _mean(losses[:2]), losses
    weights = final_weights(run)
    assert any("lora_A" in k for k in weights) and any("embed_tokens" in k for k in weights)
    assert json.loads((run / "final" / "config.json").read_text())["rope_parameters"]["rope_type"] == "yarn"
    assert assert_no_secret(run, secret) > 10


def test_tensorboard_gets_every_number_of_the_metrics(micro_recipe: Path) -> None:
    """``logging.backend: tensorboard`` (accelerate's tracker): each number of ``metrics.jsonl`` but the step, as
    ``train/<key>`` at its global step, in the run folder's ``tensorboard/``."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = micro_recipe.parent / "run"
    assert train(micro_recipe, "logging.backend=tensorboard", "train.max_steps=2") == 0
    records = metrics(run)
    assert [r["global_step"] for r in records] == [1, 2, 3, 4]
    events = EventAccumulator(str(run / TENSORBOARD))
    events.Reload()
    keys = [key for key, value in records[0].items() if isinstance(value, int | float) and key != "global_step"]
    assert {"loss", "lr", "tokens_per_s", "peak_memory_gib", "stage"} <= set(keys)
    assert sorted(events.Tags()["scalars"]) == sorted(f"train/{key}" for key in keys)
    for key in keys:
        logged = [(event.step, event.value) for event in events.Scalars(f"train/{key}")]
        assert logged == [(r["global_step"], pytest.approx(r[key], rel=1e-6)) for r in records], key


def test_existing_run_needs_resume_flag(micro_recipe: Path, capsys) -> None:
    assert train(micro_recipe, "train.max_steps=1") == 0
    assert train(micro_recipe, "train.max_steps=1") == 2
    assert "train.resume=true" in capsys.readouterr().err


@pytest.mark.parametrize("stop_after", [3, 8])
def test_resume_reproduces_uninterrupted_run(stop_after: int, micro_recipe: Path, uninterrupted: Path,
                                             monkeypatch, capsys) -> None:
    from contextlib import contextmanager

    import toolkit.runner

    @contextmanager
    def fake_signals():
        yield StopAfter(stop_after)

    monkeypatch.setattr(toolkit.runner, "stop_on_signals", fake_signals)
    run = micro_recipe.parent / "run"
    assert train(micro_recipe, "train.save_every=2") == 143
    assert "stopped by SIGTERM; checkpoint saved" in capsys.readouterr().err
    assert not (run / "final").exists()
    monkeypatch.undo()
    assert train(micro_recipe, "train.save_every=2", "train.resume=true") == 0
    assert_same_weights(final_weights(run), final_weights(uninterrupted))
    ours, reference = metrics(run), metrics(uninterrupted)
    assert [r["global_step"] for r in ours] == [r["global_step"] for r in reference]
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in reference], abs=1e-6)


def test_factor_short_of_seq_len_is_refused_after_loading(tmp_path: Path, capsys) -> None:
    """A model loaded from a folder has its native length in its config only: checked once it is loaded."""
    from transformers import LlamaConfig

    from tests.conftest import MICRO_RECIPE, write_recipe

    config = LlamaConfig(**MICRO_RECIPE["model"]["init_config"], vocab_size=320)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "base")
    model = {"name_or_path": str(tmp_path / "base"), "train_tokenizer": MICRO_RECIPE["model"]["train_tokenizer"],
             "precision": "fp32"}
    stages = [MICRO_RECIPE["train"]["stages"][0],
              {**MICRO_RECIPE["train"]["stages"][1], "rope": {"type": "yarn", "factor": 1.5}}]
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, model=model, train={**MICRO_RECIPE["train"], "stages": stages},
                                         output={"dir": str(tmp_path / "run")}))
    assert main(["validate", str(recipe)]) == 0  # the native length (64) is not in the recipe
    assert train(recipe) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: train.stages[1].rope.factor: 1.5 x original length 64 covers 96 tokens, less than seq_len 128")
    assert not (tmp_path / "run" / "run_info.json").exists() and not (tmp_path / "run" / "checkpoints").exists()
