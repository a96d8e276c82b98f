"""accelerator_kwargs builds accelerate's ParallelismConfig from the recipe and rejects impossible launches."""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from toolkit.data.batches import Batch, collate
from toolkit.data.packing import Document, pack_rows
from toolkit.errors import UserError
from toolkit.model.attention import KernelSupport, select_attention
from toolkit.parallel.launch import launched_processes
from toolkit.parallel.sequence import (
    accelerator_kwargs,
    shard_for_sequence_parallel,
    use_model_attention,
    without_ulysses_attention,
)
from toolkit.recipe.schema import ParallelSpec

FSDP2 = {"WORLD_SIZE": "8", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
DEEPSPEED = {"WORLD_SIZE": "8", "ACCELERATE_USE_DEEPSPEED": "true"}
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


CPU_ONLY = {} if torch.accelerator.is_available() else {"cpu": True}


def test_no_sequence_parallelism_adds_no_parallelism_config() -> None:
    for kwargs in (accelerator_kwargs(ParallelSpec()), accelerator_kwargs(ParallelSpec(sequence="ulysses", degree=1),
                                                                          env={})):
        assert set(kwargs) == set(CPU_ONLY) | {"kwargs_handlers", "dataloader_config"}
        assert kwargs.items() >= CPU_ONLY.items()


def test_a_gpu_build_of_torch_without_a_gpu_joins_the_cpu_processes(monkeypatch) -> None:
    """A CUDA wheel on a CPU-only machine names CUDA as its accelerator without one present: the processes must still
    form one gloo group (``cpu=True``), not each train alone."""
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: torch.device("cuda"))
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    assert accelerator_kwargs(ParallelSpec())["cpu"] is True


def test_collectives_wait_the_recipes_timeout_and_every_process_reads_its_data() -> None:
    kwargs = accelerator_kwargs(ParallelSpec(timeout_minutes=240))
    (handler,) = kwargs["kwargs_handlers"]
    assert handler.timeout == timedelta(minutes=240)
    assert kwargs["dataloader_config"].dispatch_batches is False
    assert launched_processes({}) == 1 and launched_processes({"WORLD_SIZE": "16"}) == 16


@pytest.mark.parametrize("degree, shards, attention", [(2, 4, "sdpa"), (4, 2, "auto"), (8, 1, None)])
def test_context_parallel_shards_the_rest(degree: int, shards: int, attention: str | None) -> None:
    config = accelerator_kwargs(ParallelSpec(sequence="context_parallel", degree=degree), attention=attention,
                                env=FSDP2)["parallelism_config"]
    assert (config.cp_size, config.dp_shard_size, config.sp_size) == (degree, shards, 1)
    assert config.total_size == 8 and config.cp_enabled


def test_auto_attention_on_a_gpu_is_sdpa_under_context_parallel_alone() -> None:
    """Where every faster kernel is installed, ``auto`` still picks sdpa under ring attention, and only there."""
    every = KernelSupport(flash_attn=True, torch_varlen=True, flex=True, flash_attn_4=True)
    cuda = torch.device("cuda")
    assert select_attention("auto", cuda, torch.bfloat16, support=every, context_parallel=True).implementation == "sdpa"
    assert select_attention("auto", cuda, torch.bfloat16, support=every).implementation == "flash_attention_4"


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed not installed")
def test_ulysses_config() -> None:
    config = accelerator_kwargs(ParallelSpec(sequence="ulysses", degree=4), attention="flash_attention_2",
                                env=DEEPSPEED)["parallelism_config"]
    assert (config.sp_size, config.sp_backend, config.cp_size) == (4, "deepspeed", 1)
    assert config.sp_handler.sp_seq_length_is_variable
    assert config.sp_handler.sp_attn_implementation == "flash_attention_2"


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed not installed")
@pytest.mark.parametrize("attention", ["auto", "torch_varlen", "flash_attention_4"])
def test_ulysses_starts_with_a_kernel_accelerate_takes_until_the_model_loads(attention: str) -> None:
    """The run passes ``model.attention`` as the recipe gives it; accelerate's handler takes flash_attention_2 or sdpa
    alone, and ``use_model_attention`` sets the kernel the model loaded with."""
    config = accelerator_kwargs(ParallelSpec(sequence="ulysses", degree=4), attention=attention,
                                env=DEEPSPEED)["parallelism_config"]
    assert config.sp_handler.sp_attn_implementation in ("flash_attention_2", "sdpa")


def test_ulysses_without_deepspeed_is_a_user_error(monkeypatch) -> None:
    find_spec = importlib.util.find_spec  # as on a machine without the deepspeed extra
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "deepspeed" else find_spec(name, *a))
    with pytest.raises(UserError, match="parallel.sequence: ulysses needs DeepSpeed"):
        accelerator_kwargs(ParallelSpec(sequence="ulysses", degree=4), env=DEEPSPEED)


@pytest.mark.parametrize("spec, env, attention, message", [
    (ParallelSpec(sequence="ulysses", degree=3), DEEPSPEED, None, "parallel.degree: 3 does not divide the 8"),
    (ParallelSpec(sequence="context_parallel", degree=2), {}, None, "parallel.degree: 2 does not divide the 1"),
    (ParallelSpec(sequence="ulysses", degree=2), FSDP2, None, "ulysses needs a DeepSpeed launch"),
    (ParallelSpec(sequence="context_parallel", degree=2), DEEPSPEED, None, "context_parallel needs an FSDP2 launch"),
    (ParallelSpec(sequence="context_parallel", degree=2), FSDP2, "flash_attention_2", "model.attention"),
    (ParallelSpec(sequence="ulysses", degree=2), DEEPSPEED, "eager", "model.attention: eager"),
])
def test_impossible_settings_are_user_errors(spec: ParallelSpec, env: dict, attention: str | None,
                                             message: str) -> None:
    with pytest.raises(UserError, match=message):
        accelerator_kwargs(spec, attention=attention, env=env)


def _batch() -> Batch:
    """Two rows of 4 tokens: a document of 3 with a padding token, and one of 4."""
    docs = [Document([5, 6, 7], [5, 6, 7]), Document([8, 9, 10, 11], [8, 9, 10, 11])]
    return collate(list(pack_rows(docs, 4, "split", pad_id=0)))


def test_shard_without_context_parallel_leaves_the_batch() -> None:
    batch = _batch()
    with shard_for_sequence_parallel(SimpleNamespace(parallelism_config=None), batch):
        assert sorted(batch) == ["input_ids", "labels", "position_ids", "sources"]


def test_shard_under_context_parallel_prepares_shifted_buffers() -> None:
    seen: dict[str, Any] = {}

    def maybe_context_parallel(buffers, buffer_seq_dims, no_restore_buffers):
        seen.update(buffers=buffers, dims=buffer_seq_dims, keep=no_restore_buffers)
        return SimpleNamespace(__enter__=None)

    accelerator = SimpleNamespace(parallelism_config=SimpleNamespace(cp_enabled=True),
                                  maybe_context_parallel=maybe_context_parallel)
    batch = _batch()
    shard_for_sequence_parallel(accelerator, batch)
    assert "labels" not in batch and batch["shift_labels"].tolist() == [[6, 7, -100, -100], [9, 10, 11, -100]]
    assert [t is b for t, b in zip(seen["buffers"], (batch["input_ids"], batch["shift_labels"],
                                                      batch["position_ids"]), strict=True)] == [True] * 3
    assert seen["dims"] == [1, 1, 1] and len(seen["keep"]) == 3


def _ulysses_accelerator() -> Any:
    handler = SimpleNamespace(sp_attn_implementation="sdpa")
    return SimpleNamespace(parallelism_config=SimpleNamespace(sp_enabled=True, sp_handler=handler))


def test_ulysses_takes_the_loaded_models_attention() -> None:
    accelerator = _ulysses_accelerator()
    use_model_attention(accelerator, "torch_varlen", "train.data.packing")  # separates documents by position ids
    assert accelerator.parallelism_config.sp_handler.sp_attn_implementation == "torch_varlen"
    use_model_attention(accelerator, "sdpa", None)
    assert accelerator.parallelism_config.sp_handler.sp_attn_implementation == "sdpa"
    use_model_attention(SimpleNamespace(parallelism_config=None), "eager", "train.data.packing")  # no Ulysses


@pytest.mark.parametrize("attention, packing, message", [
    ("sdpa", "train.stages[1].data.packing",
     r"train\.stages\[1\]\.data\.packing: pack under parallel.sequence: ulysses with sdpa"),
    ("eager", None, "model.attention: eager does not run under Ulysses"),
])
def test_ulysses_refuses_what_mixes_documents_or_cannot_run(attention: str, packing: str | None, message: str) -> None:
    with pytest.raises(UserError, match=message):
        use_model_attention(_ulysses_accelerator(), attention, packing)


def test_evaluation_runs_outside_the_ulysses_attention_wrapper() -> None:
    """DeepSpeed overrides the kernel's entry for the whole process and drops masks even in eval mode."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the Ulysses wrapper ran")

    accelerator = _ulysses_accelerator()
    ALL_ATTENTION_FUNCTIONS["sdpa"] = wrapper  # what DeepSpeed's register_with_transformers does
    try:
        with without_ulysses_attention(accelerator):
            assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_attention_forward
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is wrapper
        with without_ulysses_attention(SimpleNamespace(parallelism_config=None)):
            assert ALL_ATTENTION_FUNCTIONS["sdpa"] is wrapper  # no Ulysses: nothing changes
    finally:
        del ALL_ATTENTION_FUNCTIONS["sdpa"]
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_attention_forward
