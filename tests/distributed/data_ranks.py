"""One rank of ``tests/test_data_parallel_cpu.py``: started twice by ``torchrun --nproc_per_node 2`` on CPU (gloo),
it draws a stage's batches the way a run of each given kind does and saves what this rank saw to
``OUT/<scenario>-rank<r>.pt``; the test process compares the ranks with the single-process stream.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed/data_ranks.py SCENARIOS CONFIG OUT

SCENARIOS is one scenario or several separated by commas, run one after another in the same two processes (one
launch: its start-up, seconds on 2 cores, paid once); each builds its own loaders from the config's seed, so what it
saves does not depend on the scenarios before it.

Scenarios:

- ``dp``: data parallel, a real ``Accelerator(**accelerator_kwargs(ParallelSpec()))`` and ``prepare_loader``.
- ``ulysses``: the loader as accelerate shards it under DeepSpeed (by process index, as ``dp``) wrapped in DeepSpeed's
  ``UlyssesSPDataLoaderAdapter`` over both ranks, i.e. what ``accelerator.deepspeed_ulysses_dl_adapter`` builds for a
  sequence-parallel group of 2.
- ``cp``: context parallel 2 on a ``("dp_shard", "cp") = (1, 2)`` device mesh: accelerate's ``prepare_data_loader``
  with that mesh, then ``shard_for_sequence_parallel`` on an accelerator stand-in whose ``maybe_context_parallel``
  is accelerate's own method over torch's ``context_parallel`` on the ``cp`` mesh (what ``Accelerator._prepare_cp``
  sets up under FSDP2, which accelerate offers on GPUs only).
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
from collections.abc import Mapping
from itertools import islice
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator, ParallelismConfig
from accelerate.data_loader import prepare_data_loader
from transformers import AutoTokenizer

from toolkit.data.batches import StageBatches, as_batch, stage_batches, stage_loader, target_tokens
from toolkit.parallel.sequence import accelerator_kwargs, prepare_loader, row_sharers, shard_for_sequence_parallel
from toolkit.recipe.data_spec import DataSpec
from toolkit.recipe.schema import ParallelSpec

SP = 2
"""Sequence-parallel (Ulysses or context-parallel) degree: both processes form one group."""


def _copy(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone().cpu() for key, value in batch.items()}


def _summed(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over both processes (``accelerator.reduce(value, "sum")`` on gloo)."""
    total = value.detach().clone()
    dist.all_reduce(total)
    return total


class ContextParallelStandIn:
    """The parts of an ``Accelerator`` that ``shard_for_sequence_parallel`` and ``row_sharers`` read under context
    parallelism: a real ``ParallelismConfig(cp_size=2)`` and accelerate's own ``maybe_context_parallel`` over the
    ``_cp_context`` that ``Accelerator._prepare_cp`` would set (torch's ``context_parallel`` on the cp mesh)."""

    maybe_context_parallel = Accelerator.maybe_context_parallel

    def __init__(self, mesh: Any):
        from torch.distributed.tensor.experimental import context_parallel

        self.parallelism_config = ParallelismConfig(dp_shard_size=1, cp_size=SP)
        self._cp_context = functools.partial(context_parallel, mesh=mesh["cp"])


def data_parallel(config: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    spec, seq_len, batch, seed, steps = _settings(config)
    accelerator = Accelerator(**accelerator_kwargs(ParallelSpec()))
    model = torch.nn.Linear(1, 1)
    loader = prepare_loader(accelerator, stage_loader(spec, tokenizer, seq_len, batch, seed), model)
    seen = [_copy(b) for b in islice(loader, steps)]
    counted = stage_batches(spec, tokenizer, seq_len, batch, seed, sharers=row_sharers(accelerator),
                            prepare=lambda dl: prepare_loader(accelerator, dl, model))
    return {"rank": accelerator.process_index, "processes": accelerator.num_processes, "batches": seen,
            "logged": _logged(counted, steps), "sharers": row_sharers(accelerator)}


def ulysses(config: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    import deepspeed.comm
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPDataLoaderAdapter

    spec, seq_len, batch, seed, steps = _settings(config)
    accelerator = Accelerator(**accelerator_kwargs(ParallelSpec()))
    # The adapter gathers through deepspeed.comm, which a DeepSpeed engine initialises over the existing process
    # group. On CPU that would first JIT-compile DeepSpeed's shared-memory all-reduce kernel (about 90 s on 2 cores),
    # which all_gather never uses (it calls torch.distributed.all_gather), so it is left out.
    backend: Any = importlib.import_module("deepspeed.comm.torch")  # (the attribute deepspeed.comm.torch is torch)
    backend.build_shm_op = lambda: None
    deepspeed.comm.init_distributed("gloo")
    model = torch.nn.Linear(1, 1)
    rank = accelerator.process_index

    def adapted(loader: Any) -> Any:
        return UlyssesSPDataLoaderAdapter(prepare_loader(accelerator, loader, model), sp_rank=rank,
                                          sp_group=dist.group.WORLD, sp_world_size=SP, device=torch.device("cpu"))

    micro_steps = SP * steps  # each micro-step is one process's batch of the group, sliced
    slices = [_copy(b) for b in islice(adapted(stage_loader(spec, tokenizer, seq_len, batch, seed)), micro_steps)]
    targets = [target_tokens(as_batch(s)) for s in slices]
    sharers = row_sharers(SimpleNamespace(parallelism_config=ParallelismConfig(sp_size=SP, sp_backend="deepspeed")))
    windows = [int(_summed(t)) // sharers for t in targets]  # train_step's window of each micro-step
    counted = stage_batches(spec, tokenizer, seq_len, batch, seed, prepare=adapted)
    return {"rank": rank, "processes": accelerator.num_processes, "sharers": sharers, "slices": slices,
            "targets": [int(t) for t in targets], "windows": windows, "logged": _logged(counted, micro_steps)}


def context_parallel(config: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh

    spec, seq_len, batch, seed, steps = _settings(config)
    accelerator = Accelerator(**accelerator_kwargs(ParallelSpec()))  # the gloo group; its own loaders unused
    mesh = init_device_mesh("cpu", (1, SP), mesh_dim_names=("dp_shard", "cp"))
    stand_in = ContextParallelStandIn(mesh)
    sharers = row_sharers(stand_in)

    def prepared(loader: Any) -> Any:  # as Accelerator.prepare_data_loader does with its CP device mesh
        return prepare_data_loader(loader, torch_device_mesh=mesh, dispatch_batches=False, put_on_device=False)

    rows = [_copy(b) for b in islice(prepared(stage_loader(spec, tokenizer, seq_len, batch, seed)), steps)]
    counted = stage_batches(spec, tokenizer, seq_len, batch, seed, prepare=prepared, sharers=sharers)
    full, sliced, windows, slice_targets = [], [], [], []
    for _ in range(steps):  # what train_step does with each micro-batch
        micro = next(counted)
        full.append(_copy(micro))
        windows.append(int(_summed(target_tokens(micro)) // sharers))
        with shard_for_sequence_parallel(stand_in, micro):
            sliced.append(_copy(micro))
            slice_targets.append(int(target_tokens(micro)))
    return {"rank": accelerator.process_index, "processes": accelerator.num_processes, "sharers": sharers,
            "rows": rows, "full": full, "sliced": sliced, "windows": windows, "slice_targets": slice_targets,
            "logged": counted.logged(_summed)}


def _settings(config: dict[str, Any]) -> tuple[DataSpec, int, int, int, int]:
    return (DataSpec(**config["spec"]), config["seq_len"], config["batch_size"], config["seed"], config["steps"])


def _logged(batches: StageBatches, draws: int) -> dict[str, Any]:
    for _ in range(draws):
        next(batches)
    return batches.logged(_summed)


SCENARIOS = {"dp": data_parallel, "ulysses": ulysses, "cp": context_parallel}


def main(scenarios: str, config_path: str, out: str) -> None:
    torch.set_num_threads(1)
    config = json.loads(Path(config_path).read_text())
    tokenizer = AutoTokenizer.from_pretrained(config["tokenizer"])
    for scenario in scenarios.split(","):
        seen = SCENARIOS[scenario](config, tokenizer)
        torch.save(seen, Path(out) / f"{scenario}-rank{seen['rank']}.pt")
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
