"""``model.init_config`` is a typed block of the recipe (:class:`~toolkit.recipe.schema.InitConfig`): a typo in it is
refused by ``validate``, every field is a LlamaConfig keyword argument, and a recipe builds the LlamaConfig its keys
did when they were passed to LlamaConfig as written."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from transformers import LlamaConfig

from tests.conftest import MICRO_RECIPE
from toolkit.cli import main
from toolkit.model.loading import random_config
from toolkit.model.rope_methods import native_length_of
from toolkit.plan.memory import ModelShape
from toolkit.recipe.loading import load_recipe
from toolkit.recipe.schema import MODEL_SIZE_KEYS, InitConfig, ModelSpec

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = ROOT / "recipes" / "tiny-passkey.yaml"


class _Tokenizer:
    """What :func:`random_config` reads of a tokenizer."""

    def __init__(self, size: int):
        self.size, self.bos_token_id, self.eos_token_id, self.pad_token_id = size, 1, 2, 0

    def __len__(self) -> int:
        return self.size


def test_a_typo_in_init_config_is_refused_by_validate(capsys) -> None:
    """It passed ``validate`` and was found only when a run built the model."""
    typo = "model.init_config.hiden_size=64"
    assert main(["validate", str(TINY_RECIPE), "--set", typo]) == 2
    assert capsys.readouterr().err == (f"error: {TINY_RECIPE}: override '{typo}': model.init_config.hiden_size: "
                                       "unknown key (did you mean hidden_size?)\n")


def test_a_typo_in_a_recipe_file_names_its_line(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(TINY_RECIPE.read_text().replace("    hidden_size: 128", "    hiden_size: 128"))
    line = recipe.read_text().splitlines().index("    hiden_size: 128") + 1
    assert main(["validate", str(recipe)]) == 2
    assert capsys.readouterr().err == (f"error: {recipe}:{line}: model.init_config.hiden_size: unknown key (did you "
                                       "mean hidden_size?)\n")


def test_every_field_is_a_llamaconfig_field() -> None:
    llama = {field.name for field in dataclasses.fields(LlamaConfig)} | {"rope_theta"}  # which LlamaConfig moves
    assert set(InitConfig.model_fields) <= llama, sorted(set(InitConfig.model_fields) - llama)


def _as_written(init_config: dict[str, Any], tokenizer: _Tokenizer) -> dict[str, Any]:
    """The LlamaConfig the keys built when the loader passed them as written, over the tokenizer's ids."""
    return LlamaConfig(**{"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                          "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                          **init_config}).to_dict()


def test_the_tiny_recipe_builds_the_llamaconfig_it_did() -> None:
    tokenizer = _Tokenizer(512)
    written = yaml.safe_load(TINY_RECIPE.read_text())["model"]["init_config"]
    init_config = load_recipe(TINY_RECIPE).model.init_config
    assert init_config is not None
    config = random_config(init_config, tokenizer)
    assert config.to_dict() == _as_written(written, tokenizer)
    assert (config.vocab_size, config.hidden_size, config.intermediate_size, config.num_hidden_layers,
            config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.max_position_embeddings,
            config.tie_word_embeddings) == (512, 128, 512, 2, 4, 2, 32, 256, True)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}


@pytest.mark.parametrize("written", [
    MICRO_RECIPE["model"]["init_config"],
    {"hidden_size": 64},
    {"vocab_size": 600, "hidden_size": 96, "num_attention_heads": 4, "head_dim": 32, "max_position_embeddings": 256,
     "tie_word_embeddings": False, "rope_parameters": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0,
                                                       "original_max_position_embeddings": 64}},
    {"hidden_size": 64, "num_attention_heads": 4, "rope_theta": 5e5, "rms_norm_eps": 1e-5, "initializer_range": 0.01,
     "hidden_act": "gelu", "attention_bias": True, "mlp_bias": True, "attention_dropout": 0.1, "pad_token_id": 3},
], ids=["micro", "one-size", "others", "older-keys"])
def test_init_configs_build_the_llamaconfig_they_did(written: dict[str, Any]) -> None:
    tokenizer = _Tokenizer(320)
    assert random_config(InitConfig(**written), tokenizer).to_dict() == _as_written(written, tokenizer)


@pytest.mark.parametrize("rope,native", [
    (None, 1024),
    ({"rope_type": "linear", "factor": 4.0}, 256),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}, 128),
], ids=["default", "linear", "yarn"])
def test_the_recipe_reads_the_native_length_as_a_run_reads_it(rope: dict[str, Any] | None, native: int) -> None:
    """The length the recipe's checks start from is the one a run reads from the built model's config."""
    init = InitConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=1024, rope_parameters=rope)
    stated = ModelSpec(init_config=init, tokenizer="tokenizer").stated_native_length()
    assert stated == native_length_of(random_config(init, _Tokenizer(512))) == native


def test_a_linear_init_config_scales_from_its_native_length(capsys) -> None:
    """``max_position_embeddings`` 1024 under linear RoPE x4 is a native 256: a factor 2 stage covers 512 tokens."""
    init = ("model.init_config.rope_parameters={rope_type: linear, factor: 4.0}",
            "model.init_config.max_position_embeddings=1024")
    stage = "train.stages[2].rope={type: linear, factor: 2.0}"
    assert main(["validate", str(TINY_RECIPE), *(arg for s in (*init, stage) for arg in ("--set", s))]) == 2
    assert capsys.readouterr().err == (f"error: {TINY_RECIPE}: override '{stage}': train.stages[2].rope.factor: 2.0 x "
                                       "original length 256 covers 512 tokens, less than seq_len 1024\n")


@pytest.mark.parametrize(("rope", "problem"), [
    ("{rope_type: linear, factor: four}", "factor: 'four' is not a positive number"),
    ("{rope_type: bogus}", "rope_type: 'bogus' is not one of default, linear, dynamic, yarn, llama3, longrope"),
    ("{rope_type: default, rope_theta: abc}", "rope_theta: 'abc' is not a positive number"),
    ("{rope_type: default, rope_theta: -1}", "rope_theta: -1 is not a positive number"),
    ("{rope_type: linear, rope_theta: 10000.0}", "factor: rope_type 'linear' needs it"),
    ("{rope_type: longrope, factor: 2.0, short_factor: [1.0]}", "long_factor: rope_type 'longrope' needs it")])
def test_rope_parameters_that_build_no_rope_are_one_line(rope: str, problem: str, capsys) -> None:
    """What would stop a run at the model's build with a traceback (an unknown type, a word for a number, a type's
    required key missing) or train on a meaningless rotation (theta 0 or below) is one line from validate."""
    override = f"model.init_config.rope_parameters={rope}"
    assert main(["validate", str(TINY_RECIPE), "--set", override]) == 2
    assert capsys.readouterr().err == (f"error: {TINY_RECIPE}: override '{override}': model.init_config."
                                       f"rope_parameters.{problem}\n")


def test_the_size_keys_are_init_config_fields_and_a_model_shapes() -> None:
    """One list of the keys that size a model: typed in ``init_config``, and what a plan's shape writes besides
    whether the embeddings are tied."""
    assert set(MODEL_SIZE_KEYS) <= set(InitConfig.model_fields)
    written = ModelShape(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=320, head_dim=32)
    assert set(written.llama_config()) - {"tie_word_embeddings"} == set(MODEL_SIZE_KEYS)
