"""final/ folders reload with plain transformers / peft and give the training model's logits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from tests.steps import rows_batch, train_losses
from toolkit.data.tokenizer import train_tokenizer
from toolkit.errors import UserError
from toolkit.model.loading import load_for_eval, load_model
from toolkit.model.lora import CausalLM, unwrap_peft
from toolkit.model.rope import apply_rope, rope_parameters
from toolkit.model.saving import merge_adapter, save_final
from toolkit.recipe.schema import LoraSpec, MethodSpec, ModelSpec, RopeSpec, TokenizerTraining

CPU = torch.device("cpu")
NATIVE, TARGET = 128, 512
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "max_position_embeddings": NATIVE}
LORA = MethodSpec(kind="lora", merge_on_save=True,
                  lora=LoraSpec(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                trainable_modules=["embed_tokens", "norm"]))


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TokenizerTraining(vocab_size=300, corpus_documents=50), seed=0)


def trained(tokenizer, method: MethodSpec, folder: Path, **init_config: Any) -> CausalLM:
    """A tiny model after two steps of the loop at TARGET length with yarn, as the runner would leave it."""
    spec = ModelSpec(init_config={**TINY, **init_config}, train_tokenizer=TokenizerTraining())
    loaded = load_model(spec, method, tokenizer, CPU, seed=0)
    model = loaded.model
    params = rope_parameters(RopeSpec(type="yarn"), TARGET, model.config, loaded.native_length)
    apply_rope(model, params, TARGET)
    ids = torch.randint(0, len(tokenizer), (1, TARGET), generator=torch.Generator().manual_seed(0))
    train_losses(model, rows_batch(ids), 2, 1e-2, folder / "run")
    return model.eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 300, (1, TARGET), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(input_ids=ids).logits


def leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_full_model_reloads_with_plain_transformers(tokenizer, tmp_path) -> None:
    model = trained(tokenizer, MethodSpec(), tmp_path)
    final = tmp_path / "final"
    save_final(model, tokenizer, final, MethodSpec())
    save_final(model, tokenizer, final, MethodSpec())  # replacing an existing final/ works too
    config = json.loads((final / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "yarn" and config["max_position_embeddings"] == TARGET
    reloaded = AutoModelForCausalLM.from_pretrained(final).eval()
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=1e-6)
    assert AutoTokenizer.from_pretrained(final)("a b c").input_ids == tokenizer("a b c").input_ids
    evaluated, _, info = load_for_eval(str(final), None, "cpu")
    torch.testing.assert_close(logits(evaluated), logits(model), rtol=0, atol=1e-6)
    assert (info["adapter"], info["native_length"], info["max_position_embeddings"]) == (None, NATIVE, TARGET)
    assert leftovers(tmp_path) == []


def test_lora_final_is_self_sufficient(tokenizer, tmp_path) -> None:
    model = trained(tokenizer, LORA, tmp_path)
    expected = logits(model)
    final = tmp_path / "final"
    save_final(model, tokenizer, final, LORA, base_is_local_init=True)
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "tokenizer.json", "base",
            "merged"} <= {p.name for p in final.iterdir()}
    assert json.loads((final / "config.json").read_text())["rope_parameters"]["rope_type"] == "yarn"

    # with output_loading_info it returns (model, info), which transformers' annotation leaves out
    loaded = AutoModelForCausalLM.from_pretrained(final / "base", output_loading_info=True)
    base, info = cast(tuple[PreTrainedModel, dict[str, Any]], loaded)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert isinstance(model, PeftModel)
    with model.disable_adapter():  # the saved base is the untrained base
        torch.testing.assert_close(logits(base.eval()), logits(model), rtol=0, atol=1e-6)
    adapted = PeftModel.from_pretrained(base, final).eval()
    torch.testing.assert_close(logits(adapted), expected, rtol=0, atol=1e-6)

    merged = AutoModelForCausalLM.from_pretrained(final / "merged").eval()
    torch.testing.assert_close(logits(merged), expected, rtol=0, atol=1e-5)
    evaluated, _, eval_info = load_for_eval(str(final), None, "cpu")
    torch.testing.assert_close(logits(evaluated), expected, rtol=0, atol=1e-5)
    assert eval_info["base"] == str(final / "base") and eval_info["adapter"] == str(final)
    torch.testing.assert_close(logits(model), expected, rtol=0, atol=0)  # the training model is untouched


def test_merge_adapter_and_failed_save_keep_folders_whole(tokenizer, tmp_path) -> None:
    model = trained(tokenizer, LORA, tmp_path)
    final = tmp_path / "final"
    save_final(model, tokenizer, final, MethodSpec(kind="lora", lora=LORA.lora), base_is_local_init=True)
    merge_adapter(final, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(merged), logits(model), rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="not a LoRA folder"):
        merge_adapter(tmp_path / "merged", tmp_path / "again")

    class Failing:
        def save_pretrained(self, folder):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_final(model, Failing(), final, LORA)
    assert (final / "adapter_model.safetensors").is_file() and leftovers(tmp_path) == []


def upcast(model: CausalLM) -> tuple[CausalLM, dict[str, torch.Tensor]]:
    """``model`` as FSDP2 leaves a bf16 recipe's (float32 weights, a config that says bfloat16), and its gathered
    state (a copy per name)."""
    unwrap_peft(model).config.dtype = torch.bfloat16
    return model, {key: value.clone() for key, value in model.state_dict().items()}


def snapshot(model: CausalLM) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config (but the class name, which transformers records on saving) and the weights, to compare."""
    config = {key: value for key, value in vars(unwrap_peft(model).config).items() if key != "architectures"}
    return config, {key: value.clone() for key, value in model.state_dict().items()}


def assert_unchanged(model: CausalLM, before: tuple[dict[str, Any], dict[str, torch.Tensor]]) -> None:
    config, weights = snapshot(model)
    assert config == before[0]
    assert all(torch.equal(value, before[1][key]) for key, value in weights.items())


def assert_bf16_of(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == weights.keys()
    for key, value in state.items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, weights[key].bfloat16()), key


def config_dtype(folder) -> str:
    return json.loads((folder / "config.json").read_text())["dtype"]


def test_full_final_is_saved_in_the_recipe_dtype(tokenizer, tmp_path) -> None:
    model, gathered = upcast(trained(tokenizer, MethodSpec(), tmp_path, tie_word_embeddings=True))
    before = snapshot(model)
    final = tmp_path / "final"
    save_final(model, tokenizer, final, MethodSpec(), state_dict=gathered, dtype=torch.bfloat16)
    saved = load_file(final / "model.safetensors")
    assert {tensor.dtype for tensor in saved.values()} == {torch.bfloat16}
    assert "lm_head.weight" not in saved  # the tied head is written once, under the embedding's name
    assert config_dtype(final) == "bfloat16"
    assert_bf16_of(AutoModelForCausalLM.from_pretrained(final), before[1])
    assert_unchanged(model, before)


def test_lora_final_is_saved_in_the_recipe_dtype(tokenizer, tmp_path) -> None:
    model, gathered = upcast(trained(tokenizer, LORA, tmp_path))
    before = snapshot(model)
    final = tmp_path / "final"
    save_final(model, tokenizer, final, LORA, base_is_local_init=True, state_dict=gathered, dtype=torch.bfloat16)
    for weights in (final / "adapter_model.safetensors", final / "base" / "model.safetensors"):
        assert {tensor.dtype for tensor in load_file(weights).values()} == {torch.bfloat16}
    assert config_dtype(final) == config_dtype(final / "base") == config_dtype(final / "merged") == "bfloat16"
    base = AutoModelForCausalLM.from_pretrained(final / "base")
    assert_bf16_of(PeftModel.from_pretrained(base, final, autocast_adapter_dtype=False), before[1])
    assert_unchanged(model, before)
