"""Model loading, precision and attention choice, and LoRA's trainable set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.steps import rows_batch, train_losses
from toolkit.data.tokenizer import train_tokenizer
from toolkit.errors import UserError
from toolkit.model.loading import load_model
from toolkit.model.precision import resolve_dtype
from toolkit.recipe.schema import LoraSpec, MethodSpec, ModelSpec, TokenizerTraining

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "max_position_embeddings": 256}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TokenizerTraining(vocab_size=300, corpus_documents=50), seed=0)


def spec(**changes) -> ModelSpec:
    return ModelSpec(init_config=dict(TINY), train_tokenizer=TokenizerTraining(), **changes)


def test_resolve_dtype() -> None:
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("bf16", CPU) == torch.bfloat16
    assert resolve_dtype("fp32", CPU) == torch.float32
    with pytest.raises(UserError, match=r"^model.precision: fp16"):
        resolve_dtype("fp16", CPU)


def test_random_init_follows_tokenizer_and_seed(tokenizer) -> None:
    loaded = load_model(spec(), MethodSpec(), tokenizer, CPU, seed=3)
    config = loaded.model.config
    assert (config.vocab_size, config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert (loaded.native_length, loaded.native_theta, loaded.dtype) == (256, 10000.0, torch.float32)
    assert (loaded.attention, loaded.model.config._attn_implementation) == ("sdpa", "sdpa")
    same = load_model(spec(), MethodSpec(), tokenizer, CPU, seed=3).model.state_dict()
    other = load_model(spec(), MethodSpec(), tokenizer, CPU, seed=4).model.state_dict()
    weights = loaded.model.state_dict()
    assert all(torch.equal(weights[k], same[k]) for k in weights)
    assert not torch.equal(weights["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_native_length_comes_from_original_max_positions(tokenizer) -> None:
    rope = {"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0, "original_max_position_embeddings": 64}
    model_spec = ModelSpec(init_config={**TINY, "rope_parameters": rope}, train_tokenizer=TokenizerTraining())
    loaded = load_model(model_spec, MethodSpec(), tokenizer, CPU, seed=0)
    assert (loaded.native_length, loaded.native_theta) == (64, 5e5)


def test_bad_model_settings_are_user_errors(tokenizer, tmp_path) -> None:
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(UserError, match=r"^model.name_or_path: no such folder, and not a hub id"):
        load_model(ModelSpec(name_or_path=str(missing)), MethodSpec(), tokenizer, CPU, seed=0)
    with pytest.raises(UserError, match=r"^model.backend: unsloth needs a CUDA GPU"):
        load_model(spec(backend="unsloth"), MethodSpec(), tokenizer, CPU, seed=0)
    with pytest.raises(UserError, match=r"^method.lora.trainable_modules: no module .* ends with 'nrm'"):
        load_model(spec(), MethodSpec(kind="lora", lora=LoraSpec(trainable_modules=["nrm"])), tokenizer, CPU, 0)


def test_lora_trains_only_adapter_embeddings_and_every_norm(tokenizer, tmp_path: Path) -> None:
    method = MethodSpec(kind="lora", lora=LoraSpec(r=4, trainable_modules=["embed_tokens", "norm"]))
    model = load_model(spec(), method, tokenizer, CPU, seed=0).model
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if ".lora_" in n}
    copies = {n.split(".modules_to_save.")[0].removeprefix("base_model.model.") for n in trainable - lora}
    assert len(lora) == 2 * 4 * 2  # A and B, four projections, two layers
    assert copies == {"model.embed_tokens", "model.norm"} | {
        f"model.layers.{i}.{norm}" for i in range(2) for norm in ("input_layernorm", "post_attention_layernorm")}

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.randint(0, len(tokenizer), (2, 32), generator=torch.Generator().manual_seed(0))
    train_losses(model, rows_batch(ids), 3, 1e-2, tmp_path)  # three steps of the loop
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == trainable


@pytest.mark.parametrize("training", [True, False])
def test_evaluating_restores_the_mode_also_on_error(training: bool) -> None:
    from toolkit.model.loading import evaluating

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout()).train(training)
    with evaluating(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
    assert all(m.training == training for m in model.modules())
    with pytest.raises(RuntimeError), evaluating(model):
        raise RuntimeError("eval failed")
    assert all(m.training == training for m in model.modules())
