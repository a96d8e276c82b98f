"""What the steps of one run share (:class:`Session`), and :func:`setup`, which builds it: the accelerator (checked
against the launch config), the run folder, the tokenizer, every input checked, the model with its memory features,
the objective and optimizer prepared, ``run_info.json``, and a resumed run's checkpoint, once its data still
matches."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from torch import nn

from toolkit.data.batches import check_stage_data
from toolkit.data.formats import choice_token_ids
from toolkit.data.tokenizer import load_tokenizer
from toolkit.environment import allocator_setting, describe_device, package_versions, source_commit
from toolkit.errors import UserError
from toolkit.evals.registry import check_prompts, check_tasks
from toolkit.evals.suite import load_suite
from toolkit.memory.chunked_loss import PLAIN, loss_kernel
from toolkit.memory.features import enable_memory_features
from toolkit.memory.master_weights import describe_precision
from toolkit.memory.optimizers import build_optimizer
from toolkit.model.attention import AttentionChoice
from toolkit.model.loading import LoadedModel, load_model, recipe_config
from toolkit.model.lora import CausalLM
from toolkit.model.precision import resolve_dtype
from toolkit.model.rope import rope_setting
from toolkit.model.sources import base_identity
from toolkit.output_paths import check_writable, write_text
from toolkit.parallel.engines import (
    built_whole,
    check_engine,
    engine_kwargs,
    keeps_own_masters,
    mixed_precision,
    offloads_optimizer,
    warn_of_stale_build_locks,
)
from toolkit.parallel.launch import launched_engine, local_processes
from toolkit.parallel.sequence import (
    accelerator_kwargs,
    data_parallel_size,
    use_model_attention,
)
from toolkit.plan.preflight import check_host_memory
from toolkit.recipe.loading import dump_recipe
from toolkit.recipe.local_inputs import check_local_data
from toolkit.recipe.schema import Recipe
from toolkit.run_folder import RECIPE, RUN_INFO, Resume, RunInfo, StageInfo, read_run_info
from toolkit.training.checkpoints import CheckpointManager
from toolkit.training.data_identity import check_resume, data_identity, tokenizer_identity
from toolkit.training.loop import stage_steps
from toolkit.training.metrics import MetricsLogger, tracker_kwargs
from toolkit.training.model_fit import check_model_fit
from toolkit.training.objective import CausalLMObjective, causal_lm_parts
from toolkit.training.resume_record import TrainerState, check_base, resume_entry, resume_from

log = logging.getLogger(__name__)


@dataclass
class Session:
    """What the steps of one run share."""

    recipe: Recipe
    accelerator: Accelerator
    tokenizer: Any
    loaded: LoadedModel
    objective: nn.Module
    """The model with its loss, prepared by accelerate (DDP, FSDP, DeepSpeed wrap this one)."""
    optimizer: torch.optim.Optimizer
    checkpoints: CheckpointManager
    logger: MetricsLogger
    resumed: TrainerState | None = None
    """Where the checkpoint this run continues stood; None for a fresh run."""
    global_step: int = 0

    @property
    def model(self) -> CausalLM:
        return self.loaded.model




def setup(recipe: Recipe) -> Session:
    """Everything a run needs before its first step; a run folder with checkpoints must be resumed. The run folder is
    made once every input has been checked and the model loaded: a mistake found before leaves none behind."""
    accelerator = _start(recipe)
    checkpoints = CheckpointManager(recipe.run_dir, recipe.train.keep_last, accelerator)
    resume = resume_from(recipe)
    checkpoints.remove_partial()
    check_local_data(recipe.train)  # each source's first record, before the tokenizer is loaded or trained
    tokenizer = load_tokenizer(recipe.model, recipe.seed)
    config = recipe_config(recipe.model, tokenizer)
    check_stage_data(recipe.train, tokenizer, int(config.vocab_size))
    tasks = [task for suite in recipe.eval.suites for task in load_suite(suite).tasks]
    check_tasks(tasks)
    check_prompts(tasks, tokenizer)
    checkpoints.data_identity = _check_resume(recipe, resume, tokenizer, accelerator)
    attention = check_model_fit(recipe, accelerator, config)
    check_host_memory(recipe, config, accelerator.num_processes, local_processes())
    loaded = _load_model(recipe, accelerator, tokenizer, attention)
    checkpoints.base = _loaded_base(recipe, resume)
    objective = CausalLMObjective(loaded.model, recipe.train.loss_chunk_size,
                                  choice_token_ids(recipe.train, tokenizer))
    optimizer = build_optimizer([p for p in loaded.model.parameters() if p.requires_grad], recipe.train,
                                recipe.train.stages[0].lr, offloaded=offloads_optimizer(accelerator),
                                masters=not keeps_own_masters(accelerator))
    objective, optimizer = accelerator.prepare(objective, optimizer)
    if resume:  # before anything is written: a checkpoint that does not fit leaves the run folder as it was
        checkpoints.load(resume[0])
    if accelerator.is_main_process:
        resumed = resume_entry(recipe, resume[1], _now()) if resume else None  # before the record is rewritten
        recipe.run_dir.mkdir(parents=True, exist_ok=True)
        dump_recipe(recipe, recipe.run_dir / RECIPE)
        _write_run_info(recipe, loaded, accelerator, resumed)
    logger = MetricsLogger(recipe.run_dir, recipe.logging, recipe.name, accelerator,
                           enabled=accelerator.is_main_process)
    session = Session(recipe, accelerator, tokenizer, loaded, objective, optimizer, checkpoints, logger)
    if resume:
        _resumed(session, *resume)
    return session


def _start(recipe: Recipe) -> Accelerator:
    """The accelerator (checked against the recipe, with the tracker of ``logging.backend``), the seed, and the run
    folder checked writable."""
    dtype = _weights_dtype(recipe)
    _forget_earlier_runs()
    if launched_engine() == "deepspeed":
        warn_of_stale_build_locks()
    parallel = accelerator_kwargs(recipe.parallel, attention=recipe.model.attention)  # before any process group
    accelerator = Accelerator(mixed_precision=mixed_precision(dtype), **parallel, **engine_kwargs(recipe, dtype),
                              **tracker_kwargs(recipe.logging, recipe.run_dir))
    check_engine(accelerator)
    set_seed(recipe.seed)
    if accelerator.is_main_process:
        check_writable(recipe.run_dir, "output.dir")  # made once every input has been checked (setup)
    return accelerator


def _forget_earlier_runs() -> None:
    """Forget the accelerate settings of an earlier run in this process (mixed precision, engine plugins,
    accumulation), keeping its device and process group: accelerate refuses a second ``Accelerator`` that changes
    them, so a bf16 run followed by an fp32 one in the same process (a sweep, the tests) would fail."""
    AcceleratorState._reset_state()
    GradientState._reset_state()


def _weights_dtype(recipe: Recipe) -> torch.dtype:
    """The recipe's precision on this machine (fp16 does not train: schema, model.precision)."""
    return resolve_dtype(recipe.model.precision, torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def _check_resume(recipe: Recipe, resume: tuple[Path, TrainerState] | None, tokenizer,
                  accelerator: Accelerator) -> dict:
    """What this run's data depends on (recorded in every checkpoint); on resume, stop with a UserError if that
    differs from the checkpoint's record in a way that changes the data still to train on."""
    identity = data_identity(recipe, tokenizer_identity(tokenizer), accelerator.num_processes)
    if resume:
        path, state = resume
        for note in check_resume(state.data, identity, state.stage, state.step, state.stage_done, str(path)):
            accelerator.print(note)
    return identity


def _loaded_base(recipe: Recipe, resume: tuple[Path, TrainerState] | None) -> str | None:
    """The base model's identity as loaded (a hub model's is known once it is in the cache), recorded in every
    checkpoint; on resume, checked against the checkpoint's again: a hub id may have resolved to another revision as
    the model loaded."""
    base = base_identity(recipe.model)
    if resume:
        check_base(recipe, *resume, base)
    return base


def _load_model(recipe: Recipe, accelerator: Accelerator, tokenizer: Any, attention: AttentionChoice) -> LoadedModel:
    """The recipe's model on the accelerator's device with ``attention`` (:func:`check_model_fit`'s choice) and the
    memory features the recipe switches on."""
    with built_whole(accelerator) if recipe.model.init_config is not None else nullcontext():
        loaded = load_model(recipe.model, recipe.method, tokenizer, accelerator.device, recipe.seed,
                            attention=attention)
    use_model_attention(accelerator, loaded.attention, recipe.train.packed_field())  # the kernel that loaded
    accelerator.print(f"attention: {loaded.attention} ({loaded.attention_reason}); device: "
                      f"{describe_device(accelerator.device)}; processes: {accelerator.num_processes}")
    enable_memory_features(loaded.model, recipe.train)
    return loaded


def _now() -> str:
    """The time now as ``run_info.json`` records it (ISO 8601, UTC, to the second)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_run_info(recipe: Recipe, loaded: LoadedModel, accelerator: Accelerator, resumed: Resume | None) -> None:
    """``run_info.json``: the toolkit's commit, versions, device, launcher, attention and loss kernel and why, each
    stage's length, RoPE and steps, when the run started and, on a resume (``resumed``), each resume: the earlier
    ones read from the run's ``run_info.json`` (one that cannot be read is a warning and a fresh record, as it informs
    and must not stop the resume), then this one."""
    now = resumed.at if resumed else _now()
    first = RunInfo()
    if resumed:
        try:
            first = read_run_info(recipe.run_dir)
        except UserError as exc:
            log.warning("%s; writing it afresh (the run's first start and earlier resumes are not kept)", exc)
    stages = []
    data_parallel = data_parallel_size(recipe.parallel, accelerator.num_processes)
    for i, stage in enumerate(recipe.train.stages):
        rope = rope_setting(stage.rope, stage.seq_len, loaded.model.config, loaded.native_length,
                            base_theta=loaded.native_theta)
        stages.append(StageInfo(name=recipe.train.stage_name(i), seq_len=stage.seq_len,
                                rope_parameters=rope.parameters, max_position_embeddings=rope.max_position_embeddings,
                                steps=stage_steps(stage, recipe.train, data_parallel)))
    kernel, kernel_reason = (PLAIN, "train.loss_chunk_size is null") if recipe.train.loss_chunk_size is None else \
        loss_kernel(causal_lm_parts(loaded.model)[1], accelerator.device.type == "cuda")  # after prepare: ZeRO-3
    info = RunInfo(recipe=recipe.name, method=recipe.method.kind, device=describe_device(accelerator.device),
                   processes=accelerator.num_processes, data_parallel=data_parallel,
                   engine=launched_engine() or ("ddp" if accelerator.num_processes > 1 else "single process"),
                   precision=describe_precision(loaded.dtype),
                   attention=loaded.attention, attention_reason=loaded.attention_reason,
                   loss_kernel=kernel, loss_kernel_reason=kernel_reason,
                   allocator=allocator_setting(), versions=package_versions(),
                   base_model=recipe.model.name_or_path or "random init from model.init_config",
                   native_length=loaded.native_length, stages=stages,
                   started=first.started or now, resumed=[*first.resumed, resumed] if resumed else [],
                   commit=source_commit())
    write_text(recipe.run_dir / RUN_INFO, info.model_dump_json(indent=2))


def _resumed(session: Session, path: Path, state: TrainerState) -> None:
    """Continue from the checkpoint at ``path`` (loaded): metrics logged after it are dropped (they will be logged
    again)."""
    session.resumed, session.global_step = state, state.global_step
    session.accelerator.print(f"resumed from {path}")
    if session.accelerator.is_main_process:
        session.logger.truncate_after(state.global_step)
