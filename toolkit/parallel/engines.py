"""What accelerate's engines are handed: set from the recipe, so that no engine decides on its own.

- Every launcher: gradient accumulation through accelerate (``accelerator.accumulate``), the stage's count of
  micro-batches per step; under FSDP2 gradients are reduce-scattered after every micro-batch (``sync_each_batch``), so
  they accumulate sharded instead of unsharded in fp32 (``no_sync`` keeps the whole model's gradients on every GPU).
- DeepSpeed: micro-batch size, accumulation, global batch, clipping and precision written into its config (an
  "auto" there makes ``accelerator.prepare`` fail without a DataLoader, or takes accelerate's defaults), and the
  optimizer the recipe names: with the optimizer state offloaded, ``DeepSpeedCPUAdam`` in AdamW mode with the recipe's
  betas (accelerate's own mapping keeps only lr and weight decay); a config file's own optimizer or scheduler is
  refused.
- FSDP2: compute in the recipe's precision, gradients reduced in fp32, outputs left uncast (the loss sum stays fp32).
- fp32 master weights under ``precision: bf16``: DeepSpeed's and FSDP2's own (:func:`keeps_own_masters`), else the
  optimizer's (``toolkit.memory.master_weights``).

The launcher (``accelerate launch --config_file configs/X.yaml``) says which engine through its environment.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, GradientAccumulationPlugin

from toolkit.environment import describe_device
from toolkit.errors import UserError
from toolkit.parallel.launch import launched_engine, launched_processes
from toolkit.parallel.sequence import data_parallel_size
from toolkit.recipe.schema import Recipe

log = logging.getLogger(__name__)

DEEPSPEED_TAKES_FROM_RECIPE = ("optimizer", "scheduler")
"""Sections of a DeepSpeed config file that would replace what the recipe sets; refused."""
STALE_BUILD_LOCK_S = 600
"""A torch extension build's lock older than this was left by an interrupted build: one op builds in a few minutes."""


ENGINE_TYPES = {"deepspeed": DistributedType.DEEPSPEED, "fsdp": DistributedType.FSDP}
ENGINE_DROPPED = {"deepspeed": "DeepSpeed, which accelerate drops when ACCELERATE_USE_CPU is set; unset it",
                  "fsdp": "FSDP2, which accelerate 1.15 sets up on GPUs only; on CPU launch with "
                          "configs/cpu-ddp-2proc.yaml (DDP) or with DeepSpeed "
                          "(tests/distributed/cpu-deepspeed-zero3-2proc.yaml)"}


def check_engine(accelerator: Accelerator) -> None:
    """The engine the launch config names is the one accelerate set up; otherwise accelerate would train plain data
    parallel under it, silently (FSDP on CPU; DeepSpeed with ``ACCELERATE_USE_CPU`` set)."""
    engine = launched_engine()
    if engine in ENGINE_TYPES and accelerator.distributed_type != ENGINE_TYPES[engine]:
        device = describe_device(accelerator.device)
        raise UserError(f"accelerate set up {accelerator.distributed_type.value} on {device}, but the launch config "
                        f"asks for {ENGINE_DROPPED[engine]}")


def mixed_precision(dtype: torch.dtype) -> str:
    """accelerate's ``mixed_precision`` for weights in ``dtype``: bf16 runs compute under bf16 autocast on every device,
    which float32 trainable weights (LoRA adapters, FSDP2's masters) need, and which makes accelerate upcast FSDP2's
    trainable parameters to float32 before sharding."""
    return "bf16" if dtype == torch.bfloat16 else "no"


def engine_kwargs(recipe: Recipe, dtype: torch.dtype, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Keyword arguments for ``Accelerator(...)``: the accumulation plugin, and the DeepSpeed or FSDP2 plugin set
    from ``recipe`` with weights in ``dtype``. ``env`` is the launcher's environment; accelerate's plugins read their
    own settings from ``os.environ``, so tests that pass another ``env`` set it there too."""
    engine = launched_engine(env)
    accumulation = GradientAccumulationPlugin(num_steps=recipe.train.stages[0].grad_accum, sync_with_dataloader=False,
                                              sync_each_batch=engine == "fsdp")
    kwargs: dict[str, Any] = {"gradient_accumulation_plugin": accumulation}
    if engine == "deepspeed":
        kwargs["deepspeed_plugin"] = deepspeed_plugin(recipe, dtype, env)
    elif engine == "fsdp":
        kwargs["fsdp_plugin"] = fsdp_plugin(dtype)
    return kwargs


def deepspeed_plugin(recipe: Recipe, dtype: torch.dtype, env: Mapping[str, str] = os.environ) -> Any:
    """accelerate's ``DeepSpeedPlugin`` from the launcher's settings, with every value the recipe owns filled in."""
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin()
    config = plugin.deepspeed_config
    for section in DEEPSPEED_TAKES_FROM_RECIPE:
        if section in config:
            raise UserError(f"{env.get('ACCELERATE_DEEPSPEED_CONFIG_FILE')}: its {section!r} section would replace "
                            f"the recipe's train.{section}; remove it")
    first = recipe.train.stages[0]
    data_parallel = data_parallel_size(recipe.parallel, launched_processes(env))
    config["train_micro_batch_size_per_gpu"] = first.batch_size
    config["gradient_accumulation_steps"] = first.grad_accum
    config["train_batch_size"] = first.batch_size * first.grad_accum * data_parallel
    config["gradient_clipping"] = recipe.train.max_grad_norm or 0.0
    config["bf16"] = {"enabled": dtype == torch.bfloat16}
    config["fp16"] = {"enabled": False}
    if config.get("zero_optimization", {}).get("stage") == 3:  # final/ and in-run evaluations gather the weights
        config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    plugin.gradient_accumulation_steps = first.grad_accum
    plugin.gradient_clipping = config["gradient_clipping"]
    if optimizer_offloaded(plugin):
        config["zero_force_ds_cpu_optimizer"] = False  # the toolkit hands DeepSpeedCPUAdam over itself
    return plugin


def optimizer_offloaded(plugin: Any) -> bool:
    """Whether a DeepSpeed plugin keeps the optimizer state in host memory (or NVMe)."""
    device = plugin.deepspeed_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return device not in (None, "none")


def fsdp_plugin(dtype: torch.dtype) -> Any:
    """accelerate's FSDP2 plugin from the launcher's settings, with the precision policy the loop needs."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, output_dtype=None)
    return FullyShardedDataParallelPlugin(mixed_precision_policy=policy)


def offloads_optimizer(accelerator: Accelerator) -> bool:
    """Whether this run's optimizer must be DeepSpeed's CPU Adam (DeepSpeed with the optimizer state offloaded)."""
    plugin = accelerator.state.deepspeed_plugin
    return accelerator.distributed_type == DistributedType.DEEPSPEED and optimizer_offloaded(plugin)


def shards_model(accelerator: Accelerator) -> bool:
    """Whether the engine shards the model's weights, so that no process holds the whole model (FSDP, DeepSpeed)."""
    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def keeps_own_masters(accelerator: Accelerator) -> bool:
    """Whether the engine keeps float32 master weights of bf16 trainable parameters itself: DeepSpeed steps float32
    partitions under ``bf16.enabled``; accelerate upcasts FSDP2's trainable parameters to float32 before sharding when
    mixed precision is on (``toolkit.training.session`` turns it on for bf16: :func:`mixed_precision`), and the policy
    casts them to bf16 for compute: the engines that shard the model. Elsewhere the optimizer keeps them
    (``toolkit.memory.master_weights``)."""
    return shards_model(accelerator)


def backward(accelerator: Accelerator, loss: torch.Tensor) -> None:
    """``accelerator.backward`` of a loss already normalised over the whole optimizer step: undoes the division by
    the accumulation count that accelerate (outside DeepSpeed) and DeepSpeed's engine would apply."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.backward(loss, scale_wrt_gas=False)
    else:
        accelerator.backward(loss * accelerator.gradient_accumulation_steps)


def start_stage(accelerator: Accelerator, grad_accum: int) -> None:
    """Accumulate ``grad_accum`` micro-batches per step from here on (each stage may differ)."""
    accelerator.gradient_accumulation_steps = grad_accum
    accelerator.step = 0


def build_locks() -> list[tuple[Path, float]]:
    """The lock files of torch extension builds (DeepSpeed's JIT-built ops: ``cpu_adam``, ``fused_adam``, the CPU
    ``deepspeed_shm_comm``) with the time each was made. Every process that loads such an op holds its lock while
    torch checks (and if need be builds) it, seconds even when built; one killed meanwhile (Ctrl-C, a killed job or
    launch) leaves the lock, and every later load of that op waits for it to go, silently, for ever."""
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())  # where torch builds them
    locks = []
    for lock in sorted(root.glob("*/*/lock")):
        try:
            locks.append((lock, lock.stat().st_mtime))
        except FileNotFoundError:  # released meanwhile
            continue
    return locks


def stale_build_locks() -> list[tuple[Path, float]]:
    """The build locks older than :data:`STALE_BUILD_LOCK_S`, with their ages in seconds."""
    now = time.time()
    return [(lock, now - made) for lock, made in build_locks() if now - made > STALE_BUILD_LOCK_S]


def release_build_locks(since: float) -> list[Path]:
    """Delete the build locks made at or after ``since`` (a wall-clock time) and return them: for whoever has just
    killed every process it started then, whose locks no process will release now."""
    released = []
    for lock, made in build_locks():
        if made >= since:
            lock.unlink(missing_ok=True)
            released.append(lock)
    return released


def warn_of_stale_build_locks() -> None:
    """Under DeepSpeed, before its ops load: name each stale build lock, which would make the run hang."""
    for lock, age in stale_build_locks():
        log.warning("%s: left %.0f minutes ago by a build of torch extension %s that was stopped midway (unless "
                    "another run is building it now); DeepSpeed waits on it for ever: delete it", lock, age / 60,
                    lock.parent.name)


@contextmanager
def built_whole(accelerator: Accelerator) -> Iterator[None]:
    """Within the block, transformers builds models whole, as on one process, not inside DeepSpeed's
    ``deepspeed.zero.Init`` (accelerate registers its DeepSpeed config with transformers whatever
    ``zero3_init_flag`` says): a model from ``model.init_config`` then gets the same weights for a seed under every
    engine (ZeRO-3 partitions it in ``accelerator.prepare``), and a meta-device structure needs no process group."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()
