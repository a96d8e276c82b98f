"""What a run checks before its first expensive step, through the path the run takes: the attention kernel against
sequence parallelism, synthetic sources at their stage's length, the model source of the host-memory check; and the
field a data error names, the stage's own data included."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.conftest import MICRO_RECIPE, write_recipe
from tests.micro_models import micro_config
from toolkit.cli import main
from toolkit.data.tokenizer import load_tokenizer, train_tokenizer
from toolkit.errors import UserError
from toolkit.model.loading import recipe_config
from toolkit.plan.placement import HOST_MEMORY_ENV
from toolkit.plan.preflight import check_host_memory
from toolkit.recipe.schema import Recipe, TokenizerTraining
from toolkit.training.model_fit import check_model_fit
from toolkit.training.session import _load_model

FSDP2_LAUNCH = {"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
"""What ``accelerate launch --config_file configs/context-parallel-fsdp2.yaml --num_processes 2`` sets."""
OFFLOAD = {"gradient_checkpointing": True, "activation_offload": True}
"""The settings under which the run checks host memory before loading the model."""


def _recipe(tmp_path: Path, **changes: Any) -> Path:
    """The micro recipe with ``changes`` (top-level blocks; ``train`` merged into the micro one), run in ``tmp/run``."""
    train = {**MICRO_RECIPE["train"], **changes.pop("train", {})}
    return write_recipe(tmp_path, dict(MICRO_RECIPE, train=train, output={"dir": str(tmp_path / "run")}, **changes))


def _error(recipe: Path, capsys: pytest.CaptureFixture[str], *overrides: str) -> str:
    """The one line ``train`` prints when it exits 2, without ``error: ``; no run folder was made."""
    assert main(["train", str(recipe), *overrides]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0].removeprefix("error: ")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tokenizer and nothing else: a folder that is no model."""
    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(TokenizerTraining(vocab_size=320, corpus_documents=200), seed=0).save_pretrained(folder)
    return folder


def test_context_parallel_refuses_another_kernel_before_any_process_group(tmp_path: Path, capsys,
                                                                          monkeypatch) -> None:
    for key, value in FSDP2_LAUNCH.items():
        monkeypatch.setenv(key, value)
    model = {**MICRO_RECIPE["model"], "attention": "flash_attention_2"}
    recipe = _recipe(tmp_path, model=model, parallel={"sequence": "context_parallel", "degree": 2},
                     train={"data": {**MICRO_RECIPE["train"]["data"], "packing": "split"}})
    assert _error(recipe, capsys) == (
        "model.attention: flash_attention_2 does not run under parallel.sequence: context_parallel, whose ring "
        "attention runs over sdpa only; use sdpa or auto (which picks sdpa there)")
    assert not torch.distributed.is_initialized()
    assert not (tmp_path / "run").exists()


def _accelerator(**parallelism: bool) -> Any:
    """What the checks before loading and :func:`_load_model` read of an accelerator set up for sequence
    parallelism, on this CPU."""
    handler = SimpleNamespace(sp_attn_implementation="sdpa")
    config = SimpleNamespace(**{"cp_enabled": False, "sp_enabled": False, **parallelism}, sp_handler=handler)
    return SimpleNamespace(parallelism_config=config, device=torch.device("cpu"), num_processes=2,
                           state=SimpleNamespace(deepspeed_plugin=None), print=lambda *args: None)


def test_auto_attention_loads_sdpa_under_context_parallel() -> None:
    raw = dict(MICRO_RECIPE, parallel={"sequence": "context_parallel", "degree": 2},
               train={**MICRO_RECIPE["train"], "data": {**MICRO_RECIPE["train"]["data"], "packing": "split"}})
    recipe = Recipe.model_validate(raw)
    accelerator, tokenizer = _accelerator(cp_enabled=True), load_tokenizer(recipe.model, recipe.seed)
    attention = check_model_fit(recipe, accelerator, recipe_config(recipe.model, tokenizer))
    loaded = _load_model(recipe, accelerator, tokenizer, attention)
    assert (loaded.attention, loaded.attention_reason) == (
        "sdpa", "auto: parallel.sequence: context_parallel runs ring attention over sdpa only")
    assert loaded.model.config._attn_implementation == "sdpa"


def test_packed_rows_under_ulysses_on_sdpa_name_the_stage_that_packs() -> None:
    stages = [dict(stage, batch_size=2) for stage in MICRO_RECIPE["train"]["stages"]]
    stages[1]["data"] = {"source": "synthetic", "packing": "pack"}
    data = {**MICRO_RECIPE["train"]["data"], "packing": "split"}
    raw = dict(MICRO_RECIPE, parallel={"sequence": "ulysses", "degree": 2},
               train={**MICRO_RECIPE["train"], "data": data, "stages": stages})
    recipe = Recipe.model_validate(raw)
    with pytest.raises(UserError, match=r"^train\.stages\[1\]\.data\.packing: pack under parallel\.sequence: "
                                        r"ulysses with sdpa attention"):
        tokenizer = load_tokenizer(recipe.model, recipe.seed)
        check_model_fit(recipe, _accelerator(sp_enabled=True), recipe_config(recipe.model, tokenizer))


@pytest.fixture(scope="module")
def weightless_model(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder with a config and a tokenizer but no weights: a run that loaded it would stop there."""

    folder = tmp_path_factory.mktemp("weightless")
    for file in tokenizer_dir.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    micro_config(max_position_embeddings=64, vocab_size=320).save_pretrained(folder)
    return folder


def test_a_model_that_is_no_causal_lm_is_one_line_before_loading(tmp_path: Path, tokenizer_dir: Path, capsys) -> None:
    from transformers import T5Config

    folder = tmp_path / "t5"
    T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, vocab_size=320).save_pretrained(folder)
    recipe = _recipe(tmp_path, model={"name_or_path": str(folder), "tokenizer": str(tokenizer_dir),
                                      "precision": "fp32"})
    assert _error(recipe, capsys).startswith(f"model.name_or_path: cannot load {str(folder)!r}: ")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("method", "stage_rope", "expected"), [
    ({"kind": "lora", "lora": {"target_modules": ["q_proj", "v_projj"]}}, None,
     "method.lora.target_modules: no module of LlamaForCausalLM ends with 'v_projj'"),
    ({"kind": "lora", "lora": {"trainable_modules": ["nrom"]}}, None,
     "method.lora.trainable_modules: no module of LlamaForCausalLM ends with 'nrom'"),
    ({"kind": "full"}, {"type": "longrope", "factor": 2.0, "short_factor": [1.0] * 3, "long_factor": [2.0] * 8},
     "train.stages[1].rope.short_factor: 3 values; the model's rotary embedding has 8 frequencies (rotary dimension "
     "/ 2)"),
])
def test_what_the_model_cannot_take_stops_the_run_before_its_weights_load(
        tmp_path: Path, weightless_model: Path, capsys, method: dict[str, Any], stage_rope: dict[str, Any] | None,
        expected: str) -> None:
    """Checked on the model's structure (meta device): the folder has no weights, so a check made after loading them
    would never be reached."""
    stages = [dict(stage) for stage in MICRO_RECIPE["train"]["stages"]]
    if stage_rope is not None:
        stages[1]["rope"] = stage_rope
    recipe = _recipe(tmp_path, model={"name_or_path": str(weightless_model), "precision": "fp32"}, method=method,
                     train={"stages": stages})
    assert _error(recipe, capsys) == expected
    assert not (tmp_path / "run").exists()


def test_more_keys_than_there_are_names_stops_train_before_the_model(tmp_path: Path, capsys) -> None:
    recipe = _recipe(tmp_path, train={"data": {"source": "synthetic", "task": "multikey", "num_keys": 40}})
    assert _error(recipe, capsys) == "train.data.num_keys: 40 is more than the 30 distinct keys available"
    assert not (tmp_path / "run").exists()


def test_a_synthetic_document_longer_than_its_stage_names_the_stages_own_source(tmp_path: Path, capsys) -> None:
    """Stage 0 (64 tokens) shares train.data; stage 1 (128 tokens) mixes a passkey source with a multikey one whose
    12 needles alone need more than 128 tokens."""
    stages = [dict(stage) for stage in MICRO_RECIPE["train"]["stages"]]
    stages[1]["data"] = {"mixture": [{"source": "synthetic", "task": "passkey", "weight": 1.0},
                                     {"source": "synthetic", "task": "multikey", "num_keys": 12, "weight": 1.0}]}
    recipe = _recipe(tmp_path, train={"stages": stages})
    assert re.fullmatch(r"train\.stages\[1\]\.data\.mixture\[1\]\.task: a multikey document with 12 key\(s\) needs "
                        r"\d+ tokens, more than seq_len 128", _error(recipe, capsys))
    assert not (tmp_path / "run").exists()


def test_a_bad_record_in_a_stages_own_mixture_names_that_source(tmp_path: Path, capsys) -> None:
    """The first record is checked up front; the third, met in stage 1's first step, stops the run naming the
    mixture entry it belongs to, not ``train.data``."""
    docs = tmp_path / "docs.jsonl"
    lines = [{"text": "a short document about rivers and roads"}] * 2 + [{"body": "no text field"}]
    docs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    stages = [dict(stage) for stage in MICRO_RECIPE["train"]["stages"]]
    stages[1]["data"] = {"mixture": [{"source": "synthetic", "task": "passkey", "loss_on": "all", "weight": 1.0},
                                     {"source": "jsonl", "path": str(docs), "shuffle": False, "weight": 1.0}]}
    recipe = _recipe(tmp_path, train={"stages": stages})
    assert _error(recipe, capsys, "train.max_steps=1").startswith(
        f"train.stages[1].data.mixture[1].text_field: no field 'text' in {docs}:3 (fields: body); the steps trained "
        f"so far are in {tmp_path / 'run' / 'checkpoints' / 'stage-0-step-000001'}")


def test_host_memory_check_names_a_model_folder_without_config(tmp_path: Path, tokenizer_dir: Path, capsys) -> None:
    """The host-memory check reads the model's shape before the model loads: a folder that holds a tokenizer but no
    model stops there as the loader would stop, naming the field."""
    model = {"name_or_path": str(tokenizer_dir), "precision": "fp32"}
    recipe = _recipe(tmp_path, model=model, train=OFFLOAD)
    assert _error(recipe, capsys) == f"model.name_or_path: {tokenizer_dir} is no model folder: it holds no config.json"
    assert not (tmp_path / "run").exists()


def test_host_memory_check_names_a_missing_model_folder(tmp_path: Path, tokenizer_dir: Path, capsys) -> None:
    model = {"name_or_path": str(tmp_path / "no-such-model"), "tokenizer": str(tokenizer_dir), "precision": "fp32"}
    recipe = _recipe(tmp_path, model=model, train=OFFLOAD)
    assert _error(recipe, capsys) == (
        f"model.name_or_path: no such folder, and not a hub id: {tmp_path / 'no-such-model'}")


def test_host_memory_check_names_a_hub_model_out_of_reach(tmp_path: Path, tokenizer_dir: Path, capsys,
                                                          monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on a machine without the network
    model = {"name_or_path": "nobody-here/no-such-model", "tokenizer": str(tokenizer_dir), "precision": "fp32"}
    recipe = _recipe(tmp_path, model=model, train=OFFLOAD)
    assert _error(recipe, capsys).startswith("model.name_or_path: cannot load 'nobody-here/no-such-model': ")
    assert not (tmp_path / "run").exists()


def test_the_checks_read_the_config_at_the_revision_the_loader_loads(monkeypatch) -> None:
    """A hub model outside the plan's table: the config the checks before loading share (the host-memory check's
    among them) is read at ``model.revision``, with ``trust_remote_code``."""
    from transformers import AutoConfig, LlamaConfig

    seen: list[tuple[str, dict[str, Any]]] = []

    def from_pretrained(source: str, **kwargs: Any) -> LlamaConfig:
        seen.append((source, kwargs))
        return micro_config()

    monkeypatch.setattr(AutoConfig, "from_pretrained", from_pretrained)
    monkeypatch.setenv(HOST_MEMORY_ENV, "1000")
    model = {"name_or_path": "someone/custom-llama", "revision": "v2", "trust_remote_code": True}
    recipe = Recipe.model_validate(dict(MICRO_RECIPE, model=model, train={**MICRO_RECIPE["train"], **OFFLOAD}))
    check_host_memory(recipe, recipe_config(recipe.model, None), processes=1, local_processes=1)
    assert seen == [("someone/custom-llama", {"revision": "v2", "trust_remote_code": True})]
