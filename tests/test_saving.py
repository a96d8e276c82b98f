"""final/ folders reload with plain transformers / peft and give the training model's logits."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from toolkit.data.tokenizer import train_tokenizer
from toolkit.errors import UserError
from toolkit.lora import CausalLM
from toolkit.modeling import load_for_eval, load_model
from toolkit.rope import apply_rope, rope_parameters
from toolkit.saving import merge_adapter, save_final
from toolkit.schema import LoraSpec, MethodSpec, ModelSpec, RopeSpec, TokenizerTraining

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


def trained(tokenizer, method: MethodSpec) -> CausalLM:
    """A tiny model after a few steps at TARGET length with yarn, as the runner would leave it."""
    spec = ModelSpec(init_config=dict(TINY), train_tokenizer=TokenizerTraining())
    loaded = load_model(spec, method, tokenizer, CPU, seed=0)
    model = loaded.model
    params = rope_parameters(RopeSpec(type="yarn"), TARGET, model.config, loaded.native_length)
    apply_rope(model, params, TARGET)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, len(tokenizer), (1, TARGET), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 300, (1, TARGET), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(input_ids=ids).logits


def leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_full_model_reloads_with_plain_transformers(tokenizer, tmp_path) -> None:
    model = trained(tokenizer, MethodSpec())
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
    model = trained(tokenizer, LORA)
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
    model = trained(tokenizer, LORA)
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
