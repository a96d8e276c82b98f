"""Run a recipe end to end: load, evaluate the starting model, train each stage with its RoPE setting,
evaluate after each stage, save ``final/``, write the report. Everything lands in one run folder."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from toolkit.data.batches import stage_batches
from toolkit.data.tokenizer import load_tokenizer
from toolkit.environment import describe_device, package_versions
from toolkit.errors import UserError
from toolkit.memory.checkpointing import enable_checkpointing
from toolkit.memory.optimizers import build_optimizer
from toolkit.memory.tiled_mlp import enable_tiled_mlp
from toolkit.modeling import LoadedModel, load_model, resolve_dtype
from toolkit.parallel import accelerator_kwargs
from toolkit.recipe_loading import dump_recipe
from toolkit.rope import apply_rope, rope_parameters
from toolkit.saving import save_final
from toolkit.schema import Recipe
from toolkit.training.checkpoints import CheckpointManager, TrainerState
from toolkit.training.data_identity import check_resume, data_identity, tokenizer_identity
from toolkit.training.faults import stop_on_signals
from toolkit.training.loop import LoopParts, StageJob, stage_steps, train_stage
from toolkit.training.metrics import MetricsLogger
from toolkit.training.objective import CausalLMObjective


def eval_tag(recipe: Recipe, index: int | None) -> str:
    """``base`` before training, ``stage-<i>-<name>`` after stage i."""
    return "base" if index is None else f"stage-{index}-{recipe.train.stage_name(index)}"


def _stage_rope(recipe: Recipe, index: int, loaded: LoadedModel) -> tuple[dict, int]:
    stage = recipe.train.stages[index]
    params = rope_parameters(stage.rope, stage.seq_len, loaded.model.config, loaded.native_length,
                             base_theta=loaded.native_theta)
    return params, max(stage.seq_len, loaded.native_length)


def _write_run_info(recipe: Recipe, loaded: LoadedModel, accelerator: Accelerator, run_dir: Path) -> None:
    stages = []
    for i, stage in enumerate(recipe.train.stages):
        params, max_positions = _stage_rope(recipe, i, loaded)
        stages.append({"name": recipe.train.stage_name(i), "seq_len": stage.seq_len, "rope_parameters": params,
                       "max_position_embeddings": max_positions,
                       "steps": stage_steps(stage, recipe.train, accelerator.num_processes)})
    info = {"recipe": recipe.name, "method": recipe.method.kind, "device": describe_device(accelerator.device),
            "processes": accelerator.num_processes, "precision": str(loaded.dtype).replace("torch.", ""),
            "attention": loaded.attention, "attention_reason": loaded.attention_reason,
            "versions": package_versions(),
            "base_model": recipe.model.name_or_path or "random init from model.init_config",
            "native_length": loaded.native_length, "stages": stages,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=2))


def _resume_point(recipe: Recipe, checkpoints: CheckpointManager) -> tuple[Path, TrainerState] | None:
    latest = checkpoints.latest()
    if latest and not recipe.train.resume:
        raise UserError(f"{recipe.run_dir} already holds checkpoints ({latest[0].name}): set train.resume=true "
                        "to continue that run, or output.dir=... for a new one")
    return latest


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


def _evaluate(recipe: Recipe, accelerator: Accelerator, model, tokenizer, tag: str) -> None:
    """Run the recipe's suites on the main process; skipped when the weights are sharded."""
    if not recipe.eval.suites:
        return
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        accelerator.print(f"eval {tag}: skipped under sharded weights; run `make eval` on final/ afterwards")
        return
    if accelerator.is_main_process:
        from toolkit.evals.api import run_suites

        unwrapped = accelerator.unwrap_model(model)
        was_training = unwrapped.training
        unwrapped.eval()
        run_suites(unwrapped, tokenizer, recipe.eval.suites, recipe.run_dir / "eval", tag, model_name=recipe.name)
        unwrapped.train(was_training)
    accelerator.wait_for_everyone()


def _mixed_precision(recipe: Recipe) -> str:
    """Autocast on accelerators in the recipe's precision; CPU runs compute in the weights' own dtype."""
    if not torch.cuda.is_available():
        return "no"
    dtype = resolve_dtype(recipe.model.precision, torch.device("cuda"))
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")


def _check_engine(recipe: Recipe, accelerator: Accelerator) -> None:
    """The loop accumulates micro-batches itself (token-weighted, ``no_sync`` between them); DeepSpeed's ZeRO
    engine accumulates on its own and refuses ``no_sync``, so under DeepSpeed each step is one micro-batch."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    for index, stage in enumerate(recipe.train.stages):
        if stage.grad_accum > 1:
            raise UserError(f"train.stages[{index}].grad_accum: {stage.grad_accum} is not supported under DeepSpeed "
                            "yet; use 1 (raise batch_size or processes), or launch with configs/fsdp2.yaml")


def run_recipe(recipe: Recipe) -> Path:
    """Train and evaluate every stage of ``recipe``; returns the run folder."""
    accelerator = Accelerator(mixed_precision=_mixed_precision(recipe), **accelerator_kwargs(recipe.parallel))
    _check_engine(recipe, accelerator)
    set_seed(recipe.seed)
    run_dir = recipe.run_dir
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = CheckpointManager(run_dir, recipe.train.keep_last, accelerator)
    resume = _resume_point(recipe, checkpoints)
    checkpoints.remove_partial()

    tokenizer = load_tokenizer(recipe.model, recipe.seed)
    checkpoints.data_identity = _check_resume(recipe, resume, tokenizer, accelerator)
    loaded = load_model(recipe.model, recipe.method, tokenizer, accelerator.device, recipe.seed)
    model = loaded.model
    accelerator.print(f"attention: {loaded.attention} ({loaded.attention_reason}); device: "
                      f"{describe_device(accelerator.device)}; processes: {accelerator.num_processes}")
    if recipe.train.gradient_checkpointing:
        enable_checkpointing(model, offload=recipe.train.activation_offload)
    if recipe.train.tiled_mlp:
        enable_tiled_mlp(model, recipe.train.tiled_mlp)
    if accelerator.is_main_process:
        dump_recipe(recipe, run_dir / "recipe.resolved.yaml")
        _write_run_info(recipe, loaded, accelerator, run_dir)

    objective = CausalLMObjective(model, recipe.train.loss_chunk_size)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], recipe.train,
                                recipe.train.stages[0].lr)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    logger = MetricsLogger(run_dir, recipe.logging, recipe.name, enabled=accelerator.is_main_process)
    state = None
    if resume:
        checkpoints.load(resume[0])
        state = resume[1]
        accelerator.print(f"resumed from {resume[0]}")
        if accelerator.is_main_process:
            logger.truncate_after(state.global_step)
    elif recipe.eval.before:
        _evaluate(recipe, accelerator, model, tokenizer, eval_tag(recipe, None))

    global_step = state.global_step if state else 0
    try:
        with stop_on_signals() as stop:
            parts = LoopParts(accelerator, objective, optimizer, recipe.train, checkpoints, logger,
                              recipe.logging.every, stop)
            for index, stage in enumerate(recipe.train.stages):
                params, max_positions = _stage_rope(recipe, index, loaded)
                apply_rope(model, params, max_positions)
                if state and (index < state.stage or (index == state.stage and state.stage_done)):
                    if (index == state.stage and recipe.evaluates_after(index)
                            and not (recipe.run_dir / "eval" / eval_tag(recipe, index)).exists()):
                        _evaluate(recipe, accelerator, model, tokenizer, eval_tag(recipe, index))
                    continue
                start = state if state and index == state.stage else None
                batches = stage_batches(recipe.train.stage_data(index), tokenizer, stage.seq_len, stage.batch_size,
                                        seed=recipe.seed + 1000 * index, process_index=accelerator.process_index,
                                        num_processes=accelerator.num_processes)
                steps = stage_steps(stage, recipe.train, accelerator.num_processes)
                global_step = train_stage(parts, StageJob(index, stage, steps, batches, start, global_step))
                if recipe.evaluates_after(index):
                    _evaluate(recipe, accelerator, model, tokenizer, eval_tag(recipe, index))
    finally:
        logger.close()

    unwrapped = accelerator.unwrap_model(objective).model
    gathered = None
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        full = accelerator.get_state_dict(objective)  # every rank takes part; the main one gets the full weights
        gathered = {key.removeprefix("model."): value for key, value in full.items()}
    if accelerator.is_main_process:
        save_final(unwrapped, tokenizer, run_dir / "final", recipe.method,
                   base_is_local_init=recipe.model.init_config is not None, state_dict=gathered)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from toolkit.evals.report import build_report

        build_report(run_dir)
        accelerator.print(f"run folder: {run_dir} (report: {run_dir / 'report.md'})")
        if recipe.eval.verdict is not None:
            from toolkit.evals.verdict import verdict_text

            accelerator.print(verdict_text(run_dir))
    accelerator.end_training()
    return run_dir
