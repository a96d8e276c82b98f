"""Run a recipe end to end; everything lands in one run folder. A run is four steps sharing one :class:`Session`:

1. :func:`toolkit.training.session.setup`: accelerator, run folder, tokenizer, model (its RoPE checked against its
   native length), objective, optimizer and metrics; a resumed run also loads its checkpoint, once its data still
   matches.
2. :func:`evaluate_before`: the eval suites on the starting model.
3. :func:`train_stages`: every stage in order with its RoPE setting, evaluated after the stages that ask for it.
4. :func:`finish`: save ``final/`` (sharded weights gathered first), write the report, print the verdict.

A stop signal (SIGTERM, SIGINT) is acted on in every step: at the end of a training step, at once in an evaluation,
the save of ``final/`` or the report (:class:`toolkit.errors.Stopped`).

Sharded runs (FSDP2, DeepSpeed ZeRO-3) evaluate too: every process takes part in gathering the weights, and the main
process evaluates a full copy while the others wait (``parallel.timeout_minutes``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import Accelerator

from toolkit.data.batches import stage_batches
from toolkit.data.formats import trained_chat_template
from toolkit.errors import Stopped
from toolkit.model.eval_copy import eval_copy
from toolkit.model.loading import evaluating
from toolkit.model.rope import use_rope
from toolkit.model.saving import save_final
from toolkit.parallel.engines import shards_model
from toolkit.parallel.sequence import (
    data_parallel_size,
    prepare_loader,
    row_sharers,
    ulysses_degree,
    without_ulysses_attention,
)
from toolkit.recipe.loading import check_recipe
from toolkit.recipe.schema import Recipe
from toolkit.run_folder import EVAL, FINAL, REPORT_MD, eval_tag
from toolkit.training.faults import StopFlag, on_any_process, stop_on_signals
from toolkit.training.loop import LoopParts, StageJob, stage_steps, tokens_per_step, train_stage
from toolkit.training.session import Session, setup


def run_recipe(recipe: Recipe) -> Path:
    """Train and evaluate every stage of ``recipe`` (checked again as a whole first: it may have been changed in
    Python); returns the run folder."""
    recipe = check_recipe(recipe)
    session = setup(recipe)
    with stop_on_signals() as stop:
        try:
            evaluate_before(session, stop)
            train_stages(session, stop)
        finally:
            session.logger.close()
        finish(session, stop)
    return recipe.run_dir


# 2. evaluate the starting model

def evaluate_before(session: Session, stop: StopFlag) -> None:
    """The suites on the starting model (``eval.before``); a resumed run did that before it stopped. A stop signal
    ends it at once, keeping what it finished (:func:`_evaluate`)."""
    if session.resumed is None and session.recipe.evaluates(None):
        _evaluate(session, None, stop)


def _evaluate(session: Session, index: int | None, stop: StopFlag) -> None:
    """Run the recipe's suites on the main process (tag: :func:`eval_tag`) while the others wait. A stop signal that
    ``stop`` receives ends the evaluation at once, as Ctrl-C ends ``toolkit eval`` (what it finished is kept), and
    every process stops (:func:`_heed_stop`)."""
    gathered = _gathered_weights(session)
    tag = eval_tag(session.recipe, index)
    if session.accelerator.is_main_process:
        stop.run_until_stopped(lambda: _run_suites(session, gathered, tag))
    _heed_stop(session, stop, f"evaluation {tag}")


def _run_suites(session: Session, gathered: dict[str, torch.Tensor] | None, tag: str) -> None:
    from toolkit.evals.api import run_suites

    recipe = session.recipe
    with without_ulysses_attention(session.accelerator), _model_to_evaluate(session, gathered) as model:
        run_suites(model, session.tokenizer, recipe.eval.suites, recipe.run_dir / EVAL, tag, model_name=recipe.name)


def _heed_stop(session: Session, stop: StopFlag, during: str) -> None:
    """Every process waits for the main one's work (``during``: an evaluation, the save of ``final/``, the report),
    then all stop together when a stop signal reached any of them, keeping the latest checkpoint (a stage's end is
    saved before its evaluation; the starting model's evaluation has none)."""
    if signum := on_any_process(session.accelerator, stop.signum or 0):
        kept = session.checkpoints.latest()
        raise Stopped(signum, str(kept[0]) if kept else None, during)


@contextmanager
def _model_to_evaluate(session: Session, gathered: dict[str, torch.Tensor] | None) -> Iterator[torch.nn.Module]:
    """The training model in eval mode, or, when its weights are sharded, a full copy built from ``gathered``."""
    if gathered is None:
        with evaluating(session.accelerator.unwrap_model(session.model)) as model:
            yield model
        return
    copy = eval_copy(session.model, gathered, session.accelerator.device, session.loaded.dtype)
    try:
        with evaluating(copy) as model:
            yield model
    finally:
        del copy
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# 3. train every stage

def train_stages(session: Session, stop: StopFlag) -> None:
    """Every stage in order, each after switching the model to its RoPE; stages a resumed run had finished are
    skipped. A stop signal (``stop``) stops training after a checkpoint, or an evaluation at once
    (:class:`toolkit.errors.Stopped`)."""
    recipe, loaded = session.recipe, session.loaded
    parts = LoopParts(session.accelerator, session.objective, session.optimizer, recipe.train,
                      session.checkpoints, session.logger, recipe.logging.every, stop)
    for index, stage in enumerate(recipe.train.stages):
        use_rope(session.model, stage.rope, stage.seq_len, loaded.native_length, loaded.native_theta)
        if _finished_before_resume(session, index):
            _catch_up_evaluation(session, index, stop)
            continue
        session.global_step = train_stage(parts, _stage_job(session, index))
        if recipe.evaluates(index):
            _evaluate(session, index, stop)


def _finished_before_resume(session: Session, index: int) -> bool:
    state = session.resumed
    return state is not None and (index < state.stage or (index == state.stage and state.stage_done))


def _catch_up_evaluation(session: Session, index: int, stop: StopFlag) -> None:
    """The evaluation after the stage the checkpoint finished: the run stopped before or during it (what it had
    finished is reused, the rest evaluated)."""
    recipe, state = session.recipe, session.resumed
    if state is not None and index == state.stage and recipe.evaluates(index):
        _evaluate(session, index, stop)


def _stage_job(session: Session, index: int) -> StageJob:
    """Stage ``index``'s step count and endless batches, starting inside it when the run resumes there."""
    recipe, accelerator, state = session.recipe, session.accelerator, session.resumed
    stage = recipe.train.stages[index]
    start = state if state and index == state.stage else None
    data_parallel = data_parallel_size(recipe.parallel, accelerator.num_processes)
    if start and start.stream is None and start.step:
        accelerator.print(f"note: the checkpoint saved no data stream position (an older one); replaying the "
                          f"{start.step * stage.grad_accum} batches stage {index} consumed")
    batches = stage_batches(recipe.train.stage_data(index), session.tokenizer, stage.seq_len, stage.batch_size,
                            seed=recipe.seed + 1000 * index, sharers=row_sharers(accelerator),
                            prepare=lambda loader: prepare_loader(accelerator, loader, session.objective),
                            data_parallel=data_parallel, per_read=ulysses_degree(accelerator),
                            start=start.stream if start else None,
                            consumed=start.step * stage.grad_accum if start else 0,
                            vocab_size=session.model.config.vocab_size, label=recipe.train.data_field(index))
    steps = stage_steps(stage, recipe.train, data_parallel)
    return StageJob(index, stage, steps, tokens_per_step(stage, data_parallel), batches, start, session.global_step)


# 4. finish

def finish(session: Session, stop: StopFlag) -> None:
    """Save ``final/`` (adapter or full weights, tokenizer, config with the last stage's RoPE), then write the
    report and print the verdict on the main process. A stop signal ends either at once (``final/`` is written whole
    or not at all) and every process stops with the last stage's checkpoint: the resumed run writes them."""
    recipe, accelerator = session.recipe, session.accelerator
    unwrapped = accelerator.unwrap_model(session.objective).model
    gathered = _gathered_weights(session)
    if template := trained_chat_template(recipe.train, session.tokenizer):
        session.tokenizer.chat_template = template
    if accelerator.is_main_process:
        stop.run_until_stopped(lambda: save_final(
            unwrapped, session.tokenizer, recipe.run_dir / FINAL, recipe.method,
            base_is_local_init=recipe.model.init_config is not None, state_dict=gathered, dtype=session.loaded.dtype))
    _heed_stop(session, stop, f"the save of {FINAL}/")
    if accelerator.is_main_process:
        stop.run_until_stopped(lambda: _report(recipe, accelerator))
    # every process tears the process group down together (_heed_stop waits for all): a rank that left while the main
    # one still wrote the report aborted at its exit in one test run ("terminate called without an active exception",
    # ZeRO-3, 2 processes)
    _heed_stop(session, stop, "the report")
    accelerator.end_training()


def _gathered_weights(session: Session) -> dict[str, torch.Tensor] | None:
    """The full weights of a sharded model (every process takes part; the main one receives them), else None."""
    if not shards_model(session.accelerator):
        return None
    full = session.accelerator.get_state_dict(session.objective) or {}  # ZeRO-3 returns None off the main process
    return {key.removeprefix("model."): value for key, value in full.items()}


def _report(recipe: Recipe, accelerator: Accelerator) -> None:
    from toolkit.report.report import build_report

    run = build_report(recipe.run_dir)
    accelerator.print(f"run folder: {recipe.run_dir} (report: {recipe.run_dir / REPORT_MD})")
    if recipe.eval.verdict is not None:
        from toolkit.report.verdict import verdict_text

        accelerator.print(verdict_text(run))
