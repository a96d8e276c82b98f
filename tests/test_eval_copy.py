"""The evaluation copy of a (sharded) model gives its logits from the state dict alone and shares nothing with it."""

from __future__ import annotations

from itertools import chain

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM
from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from tests.micro_models import micro_llama
from toolkit.model.eval_copy import eval_copy
from toolkit.model.lora import CausalLM, apply_lora, unwrap_peft
from toolkit.recipe.schema import LoraSpec

CPU = torch.device("cpu")
LORA = LoraSpec(r=4, target_modules=["q_proj", "v_proj", "down_proj"], trainable_modules=["embed_tokens", "norm"])
pytestmark = pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # peft, on tied + LORA
IDS = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))


def tiny(tied: bool, lora: bool) -> CausalLM:
    """The micro Llama, tied or not; with LoRA its adapters and trained copies differ from their initial values."""
    config = micro_llama("sdpa", 64).config
    config.tie_word_embeddings = tied
    torch.manual_seed(0)
    model: CausalLM = LlamaForCausalLM(config)
    if lora:
        model = apply_lora(model, LORA)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name or "modules_to_save" in name:
                    parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def storages(model: nn.Module) -> set[int]:
    return {tensor.untyped_storage().data_ptr() for tensor in chain(model.parameters(), model.buffers())}


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("tied", [False, True])
def test_copy_gives_the_same_logits_and_shares_no_storage(tied: bool, lora: bool) -> None:
    model = tiny(tied, lora)
    state = model.state_dict()
    if tied:  # a gathered state dict may hold the tied head under the embedding's name only
        state = {key: value for key, value in state.items() if not key.endswith("lm_head.weight")}
    copied = eval_copy(model, state, CPU, torch.float32)
    assert type(copied) is type(model) and not copied.training
    assert not any(parameter.requires_grad for parameter in copied.parameters())
    assert torch.equal(logits(copied), logits(model))
    assert storages(copied).isdisjoint(storages(model))
    base = unwrap_peft(copied)
    assert (base.lm_head.weight is base.get_input_embeddings().weight) is (tied and not lora)
    assert copied.state_dict().keys() == model.state_dict().keys()


def test_placeholder_parameters_are_never_read_and_the_dtype_is_applied() -> None:
    model = tiny(tied=True, lora=True)
    expected = logits(model)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    for parameter in model.parameters():  # as ZeRO-3 leaves them outside a forward
        parameter.data = torch.empty(0, dtype=parameter.dtype)
    config = unwrap_peft(model).config.to_dict()
    copied = eval_copy(model, state, CPU, torch.bfloat16)
    assert {parameter.dtype for parameter in copied.parameters()} == {torch.bfloat16}
    assert unwrap_peft(copied).config.dtype == torch.bfloat16 and unwrap_peft(model).config.to_dict() == config
    torch.testing.assert_close(logits(copied).float(), expected, atol=0.05, rtol=0.05)


def test_copy_is_whole_while_zero3_is_configured() -> None:
    """transformers' own constructors would partition it (``deepspeed.zero.Init``) while a ZeRO-3 run is on."""
    model = tiny(tied=False, lora=True)
    zero3 = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}})
    try:
        assert is_deepspeed_zero3_enabled()
        copied = eval_copy(model, model.state_dict(), CPU, torch.float32)
    finally:
        unset_hf_deepspeed_config()
        del zero3
    assert not any(hasattr(parameter, "ds_id") for parameter in copied.parameters())
    assert torch.equal(logits(copied), logits(model))


def test_missing_or_unknown_keys_raise() -> None:
    model = tiny(tied=False, lora=False)
    state = model.state_dict()
    with pytest.raises(ValueError, match="missing.*lm_head.weight"):
        eval_copy(model, {key: value for key, value in state.items() if key != "lm_head.weight"}, CPU, torch.float32)
    with pytest.raises(ValueError, match="unexpected.*extra"):
        eval_copy(model, {**state, "extra": torch.zeros(1)}, CPU, torch.float32)
