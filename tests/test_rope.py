"""RoPE parameters and the in-place switch match transformers' own RoPE, in memory and after a reload."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from toolkit.errors import UserError
from toolkit.model.rope import (
    apply_rope,
    check_coverage,
    rope_parameters,
    rope_setting,
    theta_for_length,
    use_rope,
)
from toolkit.model.rope_methods import native_length_of
from toolkit.recipe.schema import RopeSpec, StageSpec, TrainSpec

NATIVE, TARGET, THETA, HEAD_DIM = 256, 1024, 10000.0, 16
DIMS: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=100)
LONG_FACTOR = [1.0 + i for i in range(HEAD_DIM // 2)]
SHORT_FACTOR = [1.0 + 0.1 * i for i in range(HEAD_DIM // 2)]

# (spec, the rope_parameters transformers should receive, written out by hand)
CASES = [
    (RopeSpec(type="linear"), {"rope_type": "linear", "rope_theta": THETA, "factor": 4.0}),
    (RopeSpec(type="dynamic", factor=2.0), {"rope_type": "dynamic", "rope_theta": THETA, "factor": 2.0}),
    (RopeSpec(type="yarn", beta_fast=16.0), {"rope_type": "yarn", "rope_theta": THETA, "factor": 4.0,
                                             "original_max_position_embeddings": NATIVE, "beta_fast": 16.0}),
    (RopeSpec(type="llama3", theta=50000.0), {"rope_type": "llama3", "rope_theta": 50000.0, "factor": 4.0,
                                              "original_max_position_embeddings": NATIVE, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0}),
    (RopeSpec(type="longrope", short_factor=SHORT_FACTOR, long_factor=LONG_FACTOR),
     {"rope_type": "longrope", "rope_theta": THETA, "factor": 4.0, "original_max_position_embeddings": NATIVE,
      "short_factor": SHORT_FACTOR, "long_factor": LONG_FACTOR}),
    (RopeSpec(type="default", theta=80000.0), {"rope_type": "default", "rope_theta": 80000.0}),
]
IDS = [spec.type for spec, _ in CASES]


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(**DIMS, max_position_embeddings=NATIVE, rope_parameters={"rope_type": "default",
                                                                                  "rope_theta": THETA})
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def reference_model(model: LlamaForCausalLM, expected: dict, max_positions: int) -> LlamaForCausalLM:
    """A model built from scratch with the hand-written RoPE and ``model``'s weights."""
    config = LlamaConfig(**DIMS, max_position_embeddings=max_positions, rope_parameters=dict(expected))
    fresh = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    fresh.load_state_dict(model.state_dict())
    return fresh


def rope_of(model: LlamaForCausalLM) -> dict[str, Any]:
    """A copy of the model's current ``rope_parameters`` (a LlamaConfig always has them)."""
    assert model.config.rope_parameters is not None
    return dict(model.config.rope_parameters)


def logits(model: torch.nn.Module, length: int = TARGET) -> torch.Tensor:
    ids = torch.randint(0, DIMS["vocab_size"], (1, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize(("spec", "expected"), CASES, ids=IDS)
def test_parameters_and_switch_match_transformers(spec: RopeSpec, expected: dict) -> None:
    model = tiny_model()
    setting = rope_setting(spec, TARGET, model.config, NATIVE)
    assert setting.parameters == expected
    before = model.model.rotary_emb.inv_freq.clone()
    apply_rope(model, setting.parameters, setting.max_position_embeddings)

    # dynamic NTK rescales beyond max_position_embeddings: it stays at the native length
    max_positions = NATIVE if spec.type == "dynamic" else TARGET
    assert model.config.max_position_embeddings == max_positions
    reference = LlamaConfig(**DIMS, max_position_embeddings=max_positions, rope_parameters=dict(expected))
    init = ROPE_INIT_FUNCTIONS.get(spec.type, type(model.model.rotary_emb).compute_default_rope_parameters)
    inv_freq, scaling = init(reference, None)
    rotary = model.model.rotary_emb
    assert torch.equal(rotary.inv_freq, inv_freq)
    assert rotary.attention_scaling == pytest.approx(scaling)
    if spec.type != "dynamic":  # dynamic equals the default until the sequence outgrows max_position_embeddings
        assert not torch.equal(rotary.inv_freq, before)
    torch.testing.assert_close(logits(model), logits(reference_model(model, expected, max_positions)),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize(("spec", "expected"), CASES, ids=IDS)
def test_saved_model_reloads_with_plain_transformers(spec: RopeSpec, expected: dict, tmp_path) -> None:
    model = tiny_model()
    setting = rope_setting(spec, TARGET, model.config, NATIVE)
    apply_rope(model, setting.parameters, setting.max_position_embeddings)
    in_memory = logits(model)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["rope_parameters"] == expected
    assert saved["max_position_embeddings"] == (NATIVE if spec.type == "dynamic" else TARGET)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    torch.testing.assert_close(logits(reloaded), in_memory, rtol=0, atol=1e-6)
    if spec.type != "default":  # scaled: a run continued from it extends from the native length
        assert native_length_of(reloaded.config) == NATIVE


@pytest.mark.parametrize("factor", [2.0, 8.0])
def test_dynamic_rescales_from_the_native_length_on_whatever_its_factor(factor: float) -> None:
    """Within the native length the model is as it was; past it the base grows (an explicit factor other than
    target / native once set the threshold to target / factor: 128 for x8, inside the native 256)."""
    model = tiny_model()
    native_logits, long_logits = logits(model, NATIVE - 16), logits(model, TARGET)
    with use_rope(model, RopeSpec(type="dynamic", factor=factor), TARGET, NATIVE):
        torch.testing.assert_close(logits(model, NATIVE - 16), native_logits, rtol=0, atol=1e-6)
        assert not torch.allclose(logits(model, TARGET), long_logits, atol=1e-3)


def test_stages_switch_back_and_forth_and_through_peft() -> None:
    model = tiny_model()
    native_logits = logits(model, 64)
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    apply_rope(wrapped, rope_parameters(RopeSpec(type="yarn"), TARGET, wrapped.get_base_model().config, NATIVE),
               TARGET)
    assert rope_of(model)["rope_type"] == "yarn"
    assert not torch.allclose(logits(wrapped, 64), native_logits, atol=1e-4)
    apply_rope(wrapped, {"rope_type": "default", "rope_theta": THETA}, NATIVE)
    torch.testing.assert_close(logits(wrapped, 64), native_logits, rtol=0, atol=1e-6)


def test_apply_keeps_device_and_dtype() -> None:
    model = tiny_model().bfloat16()
    old = model.model.rotary_emb.inv_freq
    apply_rope(model, {"rope_type": "linear", "rope_theta": THETA, "factor": 2.0}, 512)
    new = model.model.rotary_emb.inv_freq
    assert (new.dtype, new.device) == (old.dtype, old.device)


def test_theta_for_length_is_ntk_aware() -> None:
    # Llama-3-8B: base 500k, native 8192, head_dim 128, target 1M -> s = 128, exponent 128/126
    assert theta_for_length(500_000, 8192, 1_048_576, 128) == pytest.approx(69_123_823.3, rel=1e-6)
    assert theta_for_length(500_000, 8192, 65_536, 128) == pytest.approx(4_134_231.1, rel=1e-6)
    assert theta_for_length(10_000, 256, 1024, 16) == pytest.approx(10_000 * 4 ** (16 / 14))
    assert theta_for_length(10_000, 256, 128, 16) == 10_000  # no extension needed: keep the base
    with pytest.raises(ValueError):
        theta_for_length(10_000, 256, 1024, 2)


def test_auto_theta_scales_from_the_native_base_in_every_stage() -> None:
    model = tiny_model()
    spec = RopeSpec(type="default", theta="auto")
    first = rope_parameters(spec, 512, model.config, NATIVE)
    assert first["rope_theta"] == pytest.approx(THETA * 2 ** (HEAD_DIM / (HEAD_DIM - 2)))
    apply_rope(model, first, 512)
    second = rope_parameters(spec, TARGET, model.config, NATIVE, base_theta=THETA)
    assert second["rope_theta"] == pytest.approx(THETA * 4 ** (HEAD_DIM / (HEAD_DIM - 2)))
    kept = rope_parameters(RopeSpec(type="yarn"), TARGET, model.config, NATIVE, base_theta=THETA)
    assert kept["rope_theta"] == THETA  # theta None keeps the loaded model's
    current = rope_parameters(RopeSpec(type="yarn"), TARGET, model.config, NATIVE)
    assert current["rope_theta"] == first["rope_theta"]  # without base_theta: the config's current one


def test_factor_defaults_and_explicit_original() -> None:
    config = tiny_model().config
    same = rope_parameters(RopeSpec(type="linear"), NATIVE, config, NATIVE)
    assert same["factor"] == 1.0
    assert rope_parameters(RopeSpec(type="linear"), 128, config, NATIVE)["factor"] == 1.0  # never below 1
    custom = rope_parameters(RopeSpec(type="yarn", original_max_position_embeddings=128), TARGET, config, NATIVE)
    assert (custom["factor"], custom["original_max_position_embeddings"]) == (8.0, 128)
    assert math.isclose(rope_parameters(RopeSpec(type="yarn", factor=3.0), TARGET, config, NATIVE)["factor"], 3.0)


@pytest.mark.parametrize("start", [{"rope_type": "default", "rope_theta": THETA},
                                   {"rope_type": "dynamic", "rope_theta": THETA, "factor": 3.0}],
                         ids=["default", "dynamic"])
def test_use_rope_restores_the_previous_setting_exactly(start: dict) -> None:
    model = tiny_model()
    apply_rope(model, start, 1000)
    before = (rope_of(model), model.config.max_position_embeddings, logits(model, 64))
    with use_rope(model, RopeSpec(type="dynamic", factor=2.0), TARGET, NATIVE) as switch:
        assert switch.applied.parameters == {"rope_type": "dynamic", "rope_theta": THETA, "factor": 2.0}
        assert model.config.max_position_embeddings == switch.applied.max_position_embeddings == NATIVE
    assert (model.config.rope_parameters, model.config.max_position_embeddings) == before[:2]  # no rounding back
    torch.testing.assert_close(logits(model, 64), before[2], rtol=0, atol=0)


def test_use_rope_through_peft_keeps_the_previous_setting_on_error(monkeypatch) -> None:
    import toolkit.model.rope

    model = tiny_model()
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    switch = use_rope(wrapped, RopeSpec(type="yarn"), TARGET, NATIVE)
    assert rope_of(model)["rope_type"] == "yarn" and model.config.max_position_embeddings == TARGET

    def half_done(target, params, max_positions):
        apply_rope(target, params, max_positions)
        raise RuntimeError("failed after the config changed")

    monkeypatch.setattr(toolkit.model.rope, "apply_rope", half_done)
    with pytest.raises(RuntimeError):
        use_rope(wrapped, RopeSpec(type="linear"), TARGET, NATIVE)
    monkeypatch.undo()
    assert rope_of(model)["rope_type"] == "yarn"
    switch.restore()
    assert rope_of(model)["rope_type"] == "default" and model.config.max_position_embeddings == NATIVE


def test_coverage_is_checked_against_the_loaded_native_length() -> None:
    train = TrainSpec(stages=[StageSpec(seq_len=256, max_steps=1),
                              StageSpec(seq_len=1024, max_steps=1, rope=RopeSpec(type="yarn", factor=2.0))])
    config = tiny_model().config
    check_coverage(train, 512, config)
    with pytest.raises(UserError, match=r"^train.stages\[1\].rope.factor: 2.0 x original length 256 covers 512 "
                                        r"tokens, less than seq_len 1024$"):
        check_coverage(train, 256, config)


def test_every_method_of_the_table_is_one_transformers_computes_with_keys_the_recipe_has() -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from toolkit.model.rope_methods import METHODS, TYPE_KEYS

    assert set(METHODS) - {"default"} <= set(ROPE_INIT_FUNCTIONS)
    assert set(TYPE_KEYS) | {"factor"} <= set(RopeSpec.model_fields)
    for name, method in METHODS.items():
        assert set(method.required) | set(method.defaults) <= method.keys, name


def test_an_unknown_rope_method_names_the_methods() -> None:
    with pytest.raises(ValueError, match="unknown RoPE method 'yarnn'; one of default, linear, dynamic, yarn"):
        RopeSpec(type="yarnn")


def test_longrope_factors_are_checked_against_the_models_rotary_frequencies() -> None:
    """One factor per frequency (rotary dimension / 2): checked when the model is loaded, not when the stage starts."""
    config = tiny_model().config
    good = RopeSpec(type="longrope", short_factor=SHORT_FACTOR, long_factor=LONG_FACTOR)
    train = TrainSpec(stages=[StageSpec(seq_len=256, max_steps=1), StageSpec(seq_len=1024, max_steps=1, rope=good)])
    check_coverage(train, NATIVE, config)
    short = good.model_copy(update={"short_factor": SHORT_FACTOR[:3]})
    train = TrainSpec(stages=[StageSpec(seq_len=256, max_steps=1), StageSpec(seq_len=1024, max_steps=1, rope=short)])
    with pytest.raises(UserError, match=r"^train.stages\[1\].rope.short_factor: 3 values; the model's rotary "
                                        rf"embedding has {HEAD_DIM // 2} frequencies"):
        check_coverage(train, NATIVE, config)


def test_longrope_factors_count_the_rotated_dimensions_only() -> None:
    """A model rotating part of each head (``partial_rotary_factor``, as Phi-4-mini does) has fewer frequencies."""
    config = SimpleNamespace(head_dim=HEAD_DIM, hidden_size=64, num_attention_heads=4,
                             rope_parameters={"rope_type": "default", "partial_rotary_factor": 0.5})
    half = RopeSpec(type="longrope", short_factor=SHORT_FACTOR[:HEAD_DIM // 4], long_factor=LONG_FACTOR[:HEAD_DIM // 4])
    check_coverage(TrainSpec(stages=[StageSpec(seq_len=1024, max_steps=1, rope=half)]), NATIVE, config)
    whole = RopeSpec(type="longrope", short_factor=SHORT_FACTOR, long_factor=LONG_FACTOR)
    with pytest.raises(UserError, match=rf"short_factor: {HEAD_DIM // 2} values; the model's rotary embedding has "
                                        rf"{HEAD_DIM // 4} frequencies \(rotary dimension / 2\)$"):
        check_coverage(TrainSpec(stages=[StageSpec(seq_len=1024, max_steps=1, rope=whole)]), NATIVE, config)
