"""Sequence parallelism from the recipe's ``parallel:`` block, for accelerate's ``Accelerator``.

- ``ulysses``: DeepSpeed ALST/Ulysses through accelerate's ``ParallelismConfig(sp_size=N, sp_backend="deepspeed")``.
  Launch with a DeepSpeed config (``configs/sequence-parallel-ulysses.yaml``). ``accelerator.prepare`` wraps the
  model's attention (all-to-all over heads); :func:`prepare_loader` wraps each stage's DataLoader in DeepSpeed's
  ``UlyssesSPDataLoaderAdapter``: the ranks of a group gather their batches and take them one process's batch at a
  time, each rank a 1/N slice of its rows with pre-shifted ``shift_labels``.
- ``context_parallel``: PyTorch context parallelism (ring attention over SDPA) with FSDP2 through
  ``ParallelismConfig(cp_size=N, dp_shard_size=processes / N)``. Launch with ``configs/context-parallel-fsdp2.yaml``;
  the ranks of a group draw the same rows (:func:`prepare_loader`) and each step runs inside
  :func:`shard_for_sequence_parallel`, which slices the batch along the sequence. ``model.attention: auto`` is sdpa
  there (:func:`ring_attention`), and any other kernel is refused before the run starts.

Either way every rank computes the loss of its slice (``toolkit.memory.chunked_loss.shifted_lm_loss``), and the loop
normalises the summed loss by the targets summed over all ranks (``loss_sum * world_size / global_count``), which
weights every slice by its real number of targets. Under context parallelism each rank counts its group's full rows
before slicing, so that sum is divided by the degree (:func:`row_sharers`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import torch
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs
from torch.utils.data import DataLoader

from toolkit.data.batches import Batch
from toolkit.data.packing import IGNORE_INDEX
from toolkit.errors import UserError
from toolkit.model.attention import RING_ATTENTION, flash_attn_importable
from toolkit.parallel.launch import launched_engine, launched_processes
from toolkit.recipe.schema import ParallelSpec

LAUNCH_CONFIGS = {"ulysses": "configs/sequence-parallel-ulysses.yaml",
                  "context_parallel": "configs/context-parallel-fsdp2.yaml"}


def accelerator_kwargs(parallel: ParallelSpec, *, attention: str | None = None,
                       env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Keyword arguments for ``Accelerator(...)``.

    Without an accelerator this has ``cpu=True``, so that processes started by ``accelerate launch`` (torchrun)
    on a CPU-only machine join one gloo process group instead of each training alone. Collectives wait
    ``parallel.timeout_minutes``; DataLoaders are read by every process, each keeping its share (none is sent rows by
    another). With sequence parallelism it adds ``parallelism_config``. ``attention`` is ``model.attention``, checked
    against what the backend runs (Ulysses: no eager or flex_attention; context parallelism: sdpa or ``auto``, which
    is sdpa there); ``env`` is the launcher's environment (read for the process count and the launch config's kind).
    Impossible settings raise :class:`UserError` before any process group is created.
    """
    timeout = timedelta(minutes=parallel.timeout_minutes)
    if torch.accelerator.is_available():  # a device present, not only built for (a CUDA wheel on a CPU-only machine)
        kwargs: dict[str, Any] = {"kwargs_handlers": [InitProcessGroupKwargs(timeout=timeout)]}
    elif launched_engine(env) == "deepspeed":  # cpu=True would make accelerate drop DeepSpeed
        kwargs = {"kwargs_handlers": [InitProcessGroupKwargs(backend="gloo", timeout=timeout)]}
    else:
        kwargs = {"cpu": True, "kwargs_handlers": [InitProcessGroupKwargs(timeout=timeout)]}
    kwargs["dataloader_config"] = DataLoaderConfiguration(dispatch_batches=False)
    if parallel.sequence == "none" or parallel.degree == 1:
        return kwargs
    return kwargs | {"parallelism_config": _parallelism_config(parallel, attention, env)}


def _parallelism_config(parallel: ParallelSpec, attention: str | None, env: Mapping[str, str]) -> Any:
    from accelerate import ParallelismConfig

    processes = launched_processes(env)
    _check_launch(parallel, processes, env)
    if parallel.sequence == "ulysses":
        _check_ulysses_attention(attention)
        if importlib.util.find_spec("deepspeed") is None:
            raise UserError("parallel.sequence: ulysses needs DeepSpeed >= 0.18.2: pip install '.[deepspeed]'")
        from accelerate.utils import DeepSpeedSequenceParallelConfig

        # accelerate takes flash_attention_2 or sdpa here; use_model_attention sets the model's kernel before the
        # model loads and again once it has
        automatic = "flash_attention_2" if flash_attn_importable() else "sdpa"
        core = attention if attention in ("flash_attention_2", "sdpa") else automatic
        handler = DeepSpeedSequenceParallelConfig(sp_seq_length_is_variable=True, sp_attn_implementation=core)
        return ParallelismConfig(sp_size=parallel.degree, sp_backend="deepspeed", sp_handler=handler)
    if attention not in (None, "auto", RING_ATTENTION):
        raise UserError(f"model.attention: {attention} does not run under parallel.sequence: context_parallel, whose "
                        f"ring attention runs over {RING_ATTENTION} only; use {RING_ATTENTION} or auto (which picks "
                        f"{RING_ATTENTION} there)")
    return ParallelismConfig(cp_size=parallel.degree, dp_shard_size=processes // parallel.degree)


def _check_launch(parallel: ParallelSpec, processes: int, env: Mapping[str, str]) -> None:
    config = LAUNCH_CONFIGS[parallel.sequence]
    if processes % parallel.degree:
        raise UserError(f"parallel.degree: {parallel.degree} does not divide the {processes} launched process(es); "
                        f"launch with accelerate launch --config_file {config} --num_processes <multiple of "
                        f"{parallel.degree}>")
    if parallel.sequence == "ulysses" and launched_engine(env) != "deepspeed":
        raise UserError("parallel.sequence: ulysses needs a DeepSpeed launch: "
                        f"accelerate launch --config_file {config}")
    if parallel.sequence == "context_parallel" and launched_engine(env) != "fsdp":
        raise UserError(f"parallel.sequence: context_parallel needs an FSDP2 launch: accelerate launch "
                        f"--config_file {config}")


def prepare_loader(accelerator: Any, loader: DataLoader, model: torch.nn.Module) -> Any:
    """This process's batches of ``loader``: accelerate gives each data-parallel rank its share of every global
    batch (the ranks of a context-parallel group the same rows); under Ulysses, DeepSpeed's adapter then hands every
    rank of a group its slice of each of the group's rows in turn. ``model`` is the prepared model."""
    prepared = accelerator.prepare_data_loader(loader)
    config = getattr(accelerator, "parallelism_config", None)
    if config is not None and config.sp_enabled:
        return accelerator.deepspeed_ulysses_dl_adapter(prepared, model)
    return prepared


def ring_attention(accelerator: Any) -> bool:
    """Whether the run slices sequences with context parallelism, whose ring attention runs over sdpa alone (the model
    loads with ``select_attention(..., context_parallel=True)``)."""
    config = getattr(accelerator, "parallelism_config", None)
    return config is not None and bool(config.cp_enabled)


def row_sharers(accelerator: Any) -> int:
    """Processes that draw the same rows before the step slices them: the context-parallel degree, else 1."""
    return accelerator.parallelism_config.cp_size if ring_attention(accelerator) else 1


def ulysses_degree(accelerator: Any) -> int:
    """Batches DeepSpeed's Ulysses adapter hands out per batch it reads (one per rank of a group), else 1."""
    config = getattr(accelerator, "parallelism_config", None)
    return config.sp_size if config is not None and config.sp_enabled else 1


def data_parallel_size(parallel: ParallelSpec, num_processes: int) -> int:
    """Groups training on different rows at once: the processes over the sequence-parallel degree."""
    return max(1, num_processes // parallel.degree)


def use_model_attention(accelerator: Any, attention: str, packing: str | None) -> None:
    """Tell DeepSpeed's Ulysses wrapper which attention the loaded model runs (it must match the model's).
    ``packing``: the ``packing`` field of a stage that packs several documents into a row (e.g.
    ``train.stages[1].data.packing``), None when none does; SDPA cannot keep packed documents apart under Ulysses (the
    wrapper drops the mask; flash-attention 2 and PyTorch's varlen kernel separate documents by position ids)."""
    config = getattr(accelerator, "parallelism_config", None)
    if config is not None and config.sp_enabled:
        _check_ulysses_attention(attention)
        if packing is not None and attention == "sdpa":
            raise UserError(f"{packing}: pack under parallel.sequence: ulysses with sdpa attention lets packed "
                            "documents attend to each other (DeepSpeed drops the mask); use packing: split or pad, or "
                            "flash-attention 2 (model.attention: auto picks it where installed)")
        config.sp_handler.sp_attn_implementation = attention


@contextlib.contextmanager
def without_ulysses_attention(accelerator: Any) -> Iterator[None]:
    """The attention kernel's own function within the block. DeepSpeed's Ulysses wrapper replaces the kernel's entry
    in transformers' ``ALL_ATTENTION_FUNCTIONS`` for the whole process (an override of the registered function) and
    drops the attention mask even in evaluation, where left-padded prompts need it; the wrapper is put back after."""
    config = getattr(accelerator, "parallelism_config", None)
    if config is None or not config.sp_enabled:
        yield
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    key = config.sp_handler.sp_attn_implementation
    wrapper = ALL_ATTENTION_FUNCTIONS[key]
    del ALL_ATTENTION_FUNCTIONS[key]  # the override goes; the registered function shows through
    try:
        yield
    finally:
        ALL_ATTENTION_FUNCTIONS[key] = wrapper


def _check_ulysses_attention(attention: str | None) -> None:
    if attention in ("eager", "flex_attention"):
        raise UserError(f"model.attention: {attention} does not run under Ulysses; use flash_attention_2 or sdpa")


def shard_for_sequence_parallel(accelerator: Any, batch: Batch) -> contextlib.AbstractContextManager:
    """The context to run one step's forward and backward in.

    Under context parallelism it replaces the ``labels`` of ``batch`` by ``shift_labels`` (labels shifted left,
    ``IGNORE_INDEX`` at the end) and returns accelerate's ``maybe_context_parallel`` over the ids, shifted labels and
    positions, which slices each along the sequence for this rank on entry. Otherwise (no sequence parallelism, or
    Ulysses whose DataLoader already yields slices) it changes nothing and returns a null context.
    """
    if not ring_attention(accelerator):
        return contextlib.nullcontext()
    if "shift_labels" not in batch:
        padded = torch.nn.functional.pad(batch.pop("labels"), (0, 1), value=IGNORE_INDEX)
        batch["shift_labels"] = padded[:, 1:].contiguous()
    buffers = [batch["input_ids"], batch["shift_labels"], batch["position_ids"]]
    return accelerator.maybe_context_parallel(buffers=buffers, buffer_seq_dims=[1, 1, 1],
                                              no_restore_buffers=set(buffers))
