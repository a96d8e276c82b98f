"""LoRA adapters in a bf16 model are held in float32 and computed in bf16 under autocast (how the loop trains): they
train like peft's default (float32 adapters computed in float32) within bf16 rounding, without the bf16 copies of
every adapted layer's input that peft's input cast leaves under autocast; evaluation without autocast works too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tests.micro_models import micro_llama
from tests.steps import rows_batch, train_losses
from toolkit.model.loading import evaluating
from toolkit.model.lora import apply_lora
from toolkit.recipe.schema import LoraSpec

SPEC = LoraSpec(r=8, alpha=16.0)
IDS = torch.randint(0, 128, (2, 64), generator=torch.Generator().manual_seed(1))


def _bf16_model():
    return micro_llama("sdpa", 64).to(torch.bfloat16).train()  # type: ignore[arg-type]  # transformers' wrapped .to


def _peft_default():
    config = LoraConfig(r=SPEC.r, lora_alpha=SPEC.alpha, target_modules=list(SPEC.target_modules),  # type: ignore[arg-type]
                        task_type="CAUSAL_LM")
    return get_peft_model(_bf16_model(), config)


def test_adapters_are_float32_and_train_like_peft_default_under_autocast(tmp_path: Path) -> None:
    """Five steps of the loop (bf16 weights: it trains under bf16 autocast) from the same adapter weights."""
    ours, default = apply_lora(_bf16_model(), SPEC), _peft_default()
    adapters = {name: p.dtype for name, p in ours.named_parameters() if "lora_" in name}
    assert len(adapters) == 2 * 4 * 2 and set(adapters.values()) == {torch.float32}
    assert {p.dtype for n, p in ours.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    with torch.no_grad():  # the same adapter weights in both, so only where the adapters compute differs
        for target, source in zip(ours.parameters(), default.parameters(), strict=True):
            target.copy_(source)
    ours_losses, default_losses = (train_losses(model, rows_batch(IDS), 5, 1e-2, tmp_path / name)
                                   for name, model in (("ours", ours), ("default", default)))
    assert abs(ours_losses[0] - default_losses[0]) < 1e-6  # B = 0: both are the base model
    for mine, theirs in zip(ours_losses[1:], default_losses[1:], strict=True):
        assert abs(mine - theirs) < 1e-2 * theirs  # within bf16 rounding of the adapter path
    assert ours_losses[-1] < ours_losses[0] - 0.1  # and they learn


def test_no_copy_of_layer_inputs_under_autocast() -> None:
    """Bytes autograd saves in one training forward under bf16 autocast: peft's input cast makes a float32 copy of
    each adapted projection's input, which autocast casts back into a new bf16 copy that each adapter saves, so q, k
    and v keep three copies of the input they share; ours saves that bf16 input once."""
    def saved_bytes(model) -> int:
        storages: dict[int, int] = {}  # a tensor saved by several operations counts once

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=IDS[:1, :32]).logits.float().sum()
        return sum(storages.values())

    copies = 2 * 2 * 32 * 64 * 2  # two layers, two extra [1, 32, 64] bf16 copies each (measured: 24,576 bytes more)
    assert saved_bytes(_peft_default()) - saved_bytes(apply_lora(_bf16_model(), SPEC)) >= copies


def test_evaluation_runs_without_autocast() -> None:
    """Outside autocast (evaluation) the adapters get float32 inputs, as in peft, and give peft's logits."""
    ours, default = apply_lora(_bf16_model(), SPEC), _peft_default()
    with torch.no_grad():
        for target, source in zip(ours.parameters(), default.parameters(), strict=True):
            target.copy_(source + 0.01 if source.dtype == torch.float32 else source)
    with torch.no_grad(), evaluating(ours) as model:
        logits = model(input_ids=IDS[:1]).logits
    assert ours.training  # restored
    with torch.no_grad():
        for target, source in zip(default.parameters(), ours.parameters(), strict=True):
            target.copy_(source)
        expected = default.eval()(input_ids=IDS[:1]).logits
    torch.testing.assert_close(logits, expected, atol=0, rtol=0)


def test_the_base_revision_trained_on_is_the_one_merged_into(tmp_path: Path, monkeypatch) -> None:
    """``model.revision`` goes into ``adapter_config.json``, and loading the adapter's base asks for it."""
    import json

    import toolkit.model.loading as loading

    adapter = tmp_path / "final"
    apply_lora(micro_llama("sdpa", 64), SPEC, revision="0123abc").save_pretrained(str(adapter))
    assert json.loads((adapter / "adapter_config.json").read_text())["revision"] == "0123abc"
    asked: dict = {}

    def pretrained(source: str, field: str, **kwargs):
        asked.update(kwargs)
        raise loading.UserError("stop here")

    monkeypatch.setattr(loading, "_pretrained", pretrained)
    with pytest.raises(loading.UserError, match="stop here"):
        loading.load_merged("org/base", str(adapter))
    assert asked["revision"] == "0123abc"
