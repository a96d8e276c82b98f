"""LoRA adapters in the model's own dtype: no float32 adapter weights and no float32 copies of each layer's input,
with the loss of a bf16 model within bf16 rounding of peft's float32-adapter default."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tests.micro_models import train_losses
from toolkit.lora import apply_lora
from toolkit.schema import LoraSpec

SPEC = LoraSpec(r=8, alpha=16.0)


def _bf16_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).to(torch.bfloat16)  # type: ignore[arg-type]  # transformers' wrapped .to


def _train(model, steps: int) -> list[float]:
    """Losses of ``steps`` AdamW steps on one fixed batch (B nonzero after the first step: adapters matter)."""
    return train_losses(model, torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(1)), steps,
                        lr=1e-2)


def test_adapters_take_the_model_dtype_and_train_like_float32_adapters() -> None:
    ours = apply_lora(_bf16_model(), SPEC)
    adapters = {name: p.dtype for name, p in ours.named_parameters() if "lora_" in name}
    assert len(adapters) == 2 * 4 * 2 and set(adapters.values()) == {torch.bfloat16}

    config = LoraConfig(r=SPEC.r, lora_alpha=SPEC.alpha, target_modules=list(SPEC.target_modules),  # type: ignore[arg-type]
                        task_type="CAUSAL_LM")
    before = get_peft_model(_bf16_model(), config)  # peft's default: float32 adapters
    assert {p.dtype for n, p in before.named_parameters() if "lora_" in n} == {torch.float32}
    with torch.no_grad():  # the same adapter weights in both, so only the dtype differs
        for target, source in zip(ours.parameters(), before.parameters(), strict=True):
            target.copy_(source)
    ours_losses, before_losses = _train(ours, 5), _train(before, 5)
    assert abs(ours_losses[0] - before_losses[0]) < 1e-6  # B = 0: both are the base model
    for mine, theirs in zip(ours_losses[1:], before_losses[1:], strict=True):
        assert abs(mine - theirs) < 1e-3 * theirs  # within 0.1% (measured: 1.2e-5 relative, 6e-5 absolute)
    assert ours_losses[-1] < ours_losses[0] - 0.1  # and they learn


def test_no_float32_copy_of_layer_inputs() -> None:
    """Float32 elements autograd saves in one forward of the same LoRA model: peft's default saves a float32 copy
    of every adapted projection's input on top of what the bf16 adapters save (RMSNorm's and RoPE's own)."""
    def saved_float32_elements(model) -> int:
        saved = [0]
        ids = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(2))

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[0] += t.numel() if t.dtype == torch.float32 else 0
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids).logits.float().sum()
        return saved[0]

    config = LoraConfig(r=SPEC.r, lora_alpha=SPEC.alpha, target_modules=list(SPEC.target_modules),  # type: ignore[arg-type]
                        task_type="CAUSAL_LM")
    ours = saved_float32_elements(apply_lora(_bf16_model(), SPEC))
    peft_default = saved_float32_elements(get_peft_model(_bf16_model(), config))
    assert peft_default - ours >= 2 * 4 * 32 * 64  # two layers, four projections, one [1, 32, 64] input each
