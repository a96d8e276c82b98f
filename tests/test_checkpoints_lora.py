"""LoRA checkpoints hold what training changes (adapter, optimizer, RNG, trainer state), not the frozen base,
and a run resumed from one reproduces the uninterrupted run exactly."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import MICRO_RECIPE, write_recipe
from tests.runs import StopAfter, assert_same_weights, final_weights, metrics, train
from toolkit.training.checkpoints import keep_trainable

LORA = ("method.kind=lora", "method.lora.r=4", "method.lora.trainable_modules=[norm]", "train.save_every=2")


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def lora_uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lora-reference")
    recipe = write_recipe(folder, dict(MICRO_RECIPE, output={"dir": str(folder / "run")}))
    assert train(recipe, *LORA) == 0
    return folder / "run"


@pytest.mark.parametrize("stop_after", [3, 8])
def test_lora_resume_reproduces_uninterrupted_run(stop_after: int, micro_recipe: Path, lora_uninterrupted: Path,
                                                  monkeypatch) -> None:
    import toolkit.runner

    @contextmanager
    def fake_signals():
        yield StopAfter(stop_after)

    monkeypatch.setattr(toolkit.runner, "stop_on_signals", fake_signals)
    run = micro_recipe.parent / "run"
    assert train(micro_recipe, *LORA) == 143
    monkeypatch.undo()
    assert train(micro_recipe, *LORA, "train.resume=true") == 0
    assert_same_weights(final_weights(run), final_weights(lora_uninterrupted))
    ours, reference = metrics(run), metrics(lora_uninterrupted)
    assert [r["global_step"] for r in ours] == [r["global_step"] for r in reference] == list(range(1, 11))
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in reference], abs=1e-6)


def test_lora_checkpoint_holds_no_frozen_weights(lora_uninterrupted: Path, uninterrupted: Path) -> None:
    lora = sorted((lora_uninterrupted / "checkpoints").iterdir())[-1]
    full = sorted((uninterrupted / "checkpoints").iterdir())[-1]
    saved = load_file(lora / "model.safetensors")
    assert saved and all("lora_" in key or "norm" in key for key in saved), sorted(saved)[:5]
    model_bytes = (full / "model.safetensors").stat().st_size  # the whole model, float32
    assert _bytes(lora) < 0.2 * model_bytes < 0.1 * _bytes(full), (_bytes(lora), model_bytes, _bytes(full))


def test_llama3_8b_lora_checkpoint_is_about_one_percent_of_the_model() -> None:
    """The same rule on the Llama-3-8B shape (built on the meta device, nothing allocated): r=16 on attention."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256)
    with torch.device("meta"):
        model = get_peft_model(LlamaForCausalLM(config).bfloat16(),
                               LoraConfig(r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    weights = [model.state_dict()]
    keep_trainable([model], weights, "unused")
    kept = sum(t.numel() * t.element_size() for t in weights[0].values())
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    assert sum(t.numel() for t in weights[0].values()) == 32 * 16 * (2 * 8192 + 2 * 5120)  # 13.6M adapter values
    # adapter plus its two Adam moments against the bf16 base: about 1 % (16.1 GB -> 0.16 GB)
    assert 0.005 < 3 * kept / total < 0.015, 3 * kept / total
