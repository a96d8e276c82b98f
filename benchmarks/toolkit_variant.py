"""The ``toolkit`` variant: a one-stage recipe set up by ``toolkit.training.session.setup`` (accelerate with
autocast, attention choice, LoRA, checkpointing / offload / tiled MLP, chunked-loss objective, optimizer) and trained by
``toolkit.training.loop.train_stage`` (gradient clipping, token-weighted loss) on the harness's rows
(``benchmarks/rows.py``), one row a step, as the data path hands them to the loop.
Step times are the loop's own (``metrics.jsonl``), drawing each batch included; checkpoints are not written."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import SHAPES, Config, Trial
from benchmarks.rows import StepRow
from toolkit.plan.command import LORA
from toolkit.recipe.data_spec import DataSpec
from toolkit.recipe.schema import (
    LoggingSpec,
    MethodSpec,
    ModelSpec,
    OutputSpec,
    Recipe,
    StageSpec,
    TokenizerTraining,
    TrainSpec,
)

LR = 1e-5


def bench_recipe(config: Config, run_dir: Path, data: DataSpec | None = None) -> Recipe:
    """The recipe that ``config`` trains: one stage of ``warmup + steps`` steps, constant lr, on ``data`` (default:
    synthetic documents of 1/8 to all of the length, loss on every token). Its trained tokenizer is small: the
    model's vocabulary is the shape's, the tokenizer only provides special ids."""
    init = {**SHAPES[config.shape], "max_position_embeddings": max(config.seq_len, 8192)}
    stage = StageSpec(seq_len=config.seq_len, max_steps=config.warmup + config.steps, lr=LR)
    return Recipe(
        name="benchmark", seed=0,
        model=ModelSpec(init_config=init, train_tokenizer=TokenizerTraining(vocab_size=320, corpus_documents=50),
                        attention=config.attention),
        method=MethodSpec(kind=config.method, lora=LORA.model_copy(deep=True)),
        train=TrainSpec(data=data or DataSpec(source="synthetic", loss_on="all", min_length_fraction=0.125),
                        stages=[stage], scheduler="constant", gradient_checkpointing=config.checkpointing,
                        activation_offload=config.offload, tiled_mlp=config.tiles, loss_chunk_size=config.loss_chunk),
        logging=LoggingSpec(every=1), output=OutputSpec(dir=str(run_dir)))


def run_toolkit(config: Config, built: Callable[[], None], rows: list[StepRow]) -> Trial:
    from toolkit.data.batches import StageBatches, collate, stage_loader
    from toolkit.data.stream_state import StreamState
    from toolkit.model.lora import count_parameters
    from toolkit.run_folder import read_metrics
    from toolkit.training.checkpoints import CheckpointManager
    from toolkit.training.faults import StopFlag
    from toolkit.training.loop import LoopParts, StageJob, stage_steps, tokens_per_step, train_stage
    from toolkit.training.resume_record import TrainerState
    from toolkit.training.session import setup

    class NoCheckpoints(CheckpointManager):
        def save(self, state: TrainerState) -> Path:
            return self.root

    class GivenBatches(StageBatches):
        """The benchmark's own rows, handed in: no stream read them, so no position is kept (nothing is saved)."""

        def position(self) -> StreamState:
            return self.rows.start

    with tempfile.TemporaryDirectory() as folder:
        recipe = bench_recipe(config, Path(folder) / "run")
        session = setup(recipe)
        built()
        parts = LoopParts(session.accelerator, session.objective, session.optimizer, recipe.train,
                          NoCheckpoints(recipe.run_dir, 1, session.accelerator), session.logger, 1, StopFlag())
        spec = recipe.train.stages[0]
        packed = stage_loader(recipe.train.data, session.tokenizer, spec.seq_len, 1, recipe.seed).dataset
        batches = GivenBatches(iter([collate([step.row]) for step in rows]), packed)  # type: ignore[arg-type]
        train_stage(parts, StageJob(0, spec, stage_steps(spec, recipe.train, 1), tokens_per_step(spec, 1), batches,
                                    None, 0))
        session.logger.close()
        records = read_metrics(recipe.run_dir)
    trainable, total = count_parameters(session.model)
    timed = records[config.warmup:]
    return Trial(losses=[r["loss"] for r in records], step_s=[config.seq_len / r["tokens_per_s"] for r in timed],
                 trainable_fraction=trainable / total, attention=session.loaded.attention,
                 peak_gib=max(r["peak_memory_gib"] for r in records))
