"""``python -m toolkit plan RECIPE --gpus N --gpu-memory GB``: memory per GPU of every stage, and what to change.

For each stage the table lists weights, gradients, optimizer state, activations (kept across layers and the
one-layer working set), logits, the eager attention matrix, the dense L×L attention mask that packed rows get
under sdpa or eager (one per step, shared by the layers) and runtime overhead (see ``toolkit.plan.memory``),
then FITS or DOES NOT FIT. A stage that does not fit gets a path of switches, applied one after the other
with the total after each, until it fits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from toolkit.errors import UserError
from toolkit.model.attention import DENSE_MASK
from toolkit.plan.memory import GIB, Estimate, ModelShape, Setup, estimate, shape_for
from toolkit.recipe.schema import Recipe

TILE_TOKENS = 8192
"""Sequence tile of the tiled MLP that the advice proposes (tokens per tile per GPU)."""


def recipe_shape(recipe: Recipe) -> ModelShape:
    model = recipe.model
    vocab = model.train_tokenizer.vocab_size if model.train_tokenizer else None
    return shape_for(model.name_or_path, model.init_config, vocab)


def stage_setup(recipe: Recipe, index: int, gpus: int) -> Setup:
    """The memory-relevant settings of stage ``index`` on ``gpus`` GPUs."""
    stage, train, method = recipe.train.stages[index], recipe.train, recipe.method
    lora = method.lora if method.kind == "lora" else None
    return Setup(seq_len=stage.seq_len, batch_size=stage.batch_size, gpus=gpus,
                 param_bytes=4 if recipe.model.precision == "fp32" else 2,
                 lora_rank=lora.r if lora else None, lora_targets=tuple(lora.target_modules) if lora else (),
                 fully_trained=tuple(lora.trainable_modules) if lora else (), optimizer=train.optimizer,
                 checkpointing=train.gradient_checkpointing, offload=train.activation_offload,
                 loss_chunk=train.loss_chunk_size, tiles=train.tiled_mlp,
                 attention="eager" if recipe.model.attention == "eager" else "flash/sdpa",
                 dense_mask=recipe.model.attention in DENSE_MASK and train.stage_data(index).packing == "pack",
                 sequence_degree=recipe.parallel.degree)


def _sequence_degree(shape: ModelShape, gpus: int) -> int:
    """The largest power of two that divides both the GPU count and the attention heads."""
    degree = 1
    while gpus % (degree * 2) == 0 and shape.heads % (degree * 2) == 0:
        degree *= 2
    return degree


def _switches(shape: ModelShape, setup: Setup) -> Iterator[tuple[str, Setup]]:
    """Changes that lower memory, cheapest to adopt first, each applied on top of the previous ones."""
    if setup.attention == "eager" or setup.dense_mask:
        setup = setup.with_(attention="flash/sdpa", dense_mask=False)
        yield "model.attention: auto (flash-attention, varlen or flex on a GPU: no L^2 matrix or mask)", setup
    if setup.loss_chunk is None:
        setup = setup.with_(loss_chunk=4096)
        yield "train.loss_chunk_size: 4096", setup
    if not setup.checkpointing:
        setup = setup.with_(checkpointing=True)
        yield "train.gradient_checkpointing: true", setup
    if not setup.tiles:
        tokens = setup.batch_size * setup.seq_len // setup.sequence_degree
        setup = setup.with_(tiles=max(2, math.ceil(tokens / TILE_TOKENS)))
        yield f"train.tiled_mlp: {setup.tiles}", setup
    if not setup.offload:
        setup = setup.with_(offload=True)
        yield "train.activation_offload: true", setup
    degree = _sequence_degree(shape, setup.gpus)
    if degree > setup.sequence_degree:
        setup = setup.with_(sequence_degree=degree)
        yield f"parallel: {{sequence: ulysses, degree: {degree}}}", setup
    if setup.lora_rank is None:
        setup = setup.with_(lora_rank=16, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"))
        yield "method.kind: lora", setup
    if setup.optimizer == "adamw":
        setup = setup.with_(optimizer="adamw_8bit")
        yield "train.optimizer: adamw_8bit", setup


def advice(shape: ModelShape, setup: Setup, budget: float) -> list[str]:
    """Switches to apply in order, each with the total it leads to, until the stage fits; else the GPUs needed."""
    lines = []
    for label, changed in _switches(shape, setup):
        total = estimate(shape, changed).total
        if total >= estimate(shape, setup).total:
            continue
        setup = changed
        lines.append(f"{label} -> {total / GIB:.1f} GiB")
        if total <= budget:
            return lines
    for gpus in (2**k for k in range(1, 11)):
        if gpus <= setup.gpus:
            continue
        grown = setup.with_(gpus=gpus, sequence_degree=max(setup.sequence_degree, _sequence_degree(shape, gpus)))
        if (total := estimate(shape, grown).total) <= budget:
            return lines + [f"{gpus} GPUs (sequence degree {grown.sequence_degree}) -> {total / GIB:.1f} GiB"]
    return lines + ["more than 1024 GPUs with these settings: shorten the stage"]


def _cell(value: float) -> str:
    return f"{value / GIB:,.2f}"


def print_plan(recipe: Recipe, gpus: int, gpu_memory_gib: float) -> int:
    """Print the per-stage memory table with verdicts and advice; returns 0 (a verdict is not an error)."""
    if gpus < 1:
        raise UserError(f"--gpus: must be at least 1, got {gpus}")
    if gpu_memory_gib <= 0:
        raise UserError(f"--gpu-memory: must be positive GiB, got {gpu_memory_gib:g}")
    shape = recipe_shape(recipe)
    budget = gpu_memory_gib * GIB
    stages = recipe.train.stages
    names = [recipe.train.stage_name(i) for i in range(len(stages))]
    setups = [stage_setup(recipe, i, gpus) for i in range(len(stages))]
    estimates: list[Estimate] = [estimate(shape, setup) for setup in setups]
    print(f"plan: {recipe.name} on {gpus} GPU(s) x {gpu_memory_gib:g} GiB; model {shape.params / 1e6:,.1f}M params "
          f"({shape.layers} layers, hidden {shape.hidden}, vocab {shape.vocab}); method {recipe.method.kind}")
    if recipe.model.precision != "fp32":
        print("  bf16 compute, fp32 master weights: 4 B per trainable parameter beside its bf16 weight and gradient, "
              "and 8 B of fp32 AdamW moments (LoRA adapters are held in fp32 themselves)")
    if gpus > 1:
        print(f"  weights, gradients and optimizer state sharded over {gpus} GPUs (configs/fsdp2.yaml or a "
              "DeepSpeed ZeRO-3 config; with DDP each GPU holds them whole)")
    degree = recipe.parallel.degree
    if degree > 1 and gpus % degree:
        print(f"  warning: parallel.degree {degree} does not divide --gpus {gpus}; the launch will be refused")
    rows = [("seq_len x batch", [f"{s.seq_len:,} x {s.batch_size}" for s in setups])]
    for part in estimates[0].parts:
        rows.append((f"{part} (GiB)", [_cell(e.parts[part]) for e in estimates]))
    rows.append(("total per GPU (GiB)", [_cell(e.total) for e in estimates]))
    rows.append(("host per GPU, offloaded", [_cell(e.host) for e in estimates]))
    rows.append(("verdict", ["FITS" if e.total <= budget else "DOES NOT FIT" for e in estimates]))
    label_width = max(len(label) for label, _ in rows) + 2
    width = max(len(text) for text in names + [cell for _, cells in rows for cell in cells]) + 2
    print("".join([" " * label_width] + [n.rjust(width) for n in names]))
    for label, cells in rows:
        print(label.ljust(label_width) + "".join(c.rjust(width) for c in cells))
    for name, setup, result in zip(names, setups, estimates, strict=True):
        if result.total > budget:
            print(f"{name}: needs {result.total / GIB:.1f} GiB of {gpu_memory_gib:g}; switch on, in order:")
            for line in advice(shape, setup, budget):
                print(f"  - {line}")
    fits = sum(e.total <= budget for e in estimates)
    print(f"verdict: {fits} of {len(estimates)} stage(s) fit")
    return 0
