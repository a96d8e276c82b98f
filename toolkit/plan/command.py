"""``python -m toolkit plan RECIPE --gpus N --gpu-memory GB [--host-memory GB]``: memory per GPU and host memory of
every stage, and what to change.

For each stage the table lists weights, gradients, optimizer state, activations (kept across layers and the
one-layer working set), logits, the eager attention matrix, the dense L×L attention mask that packed rows get
under sdpa or eager (one per step, shared by the layers), the allocator's reserve and runtime overhead (see
``toolkit.plan.memory``), then FITS or DOES NOT FIT for the GPU; then the host memory of the offloaded activations
and the processes (all ``--gpus`` processes on the host memory given, by default this machine's RAM) and FITS or
DOES NOT FIT for the host. A stage that does not fit gets a path of switches, applied one after the other with the
total after each, until the GPU fits, then the placement of offloaded layers that fits both (with those switches on),
when one does. It exits 1 when some stage does not fit (as a run stops before loading its model when the host
memory does not fit: :mod:`toolkit.plan.preflight`), 0 when every stage fits, and 2 (a usage error, nothing planned)
when the recipe's ``parallel.degree`` does not divide ``--gpus``: that launch is refused whatever the memory
(:mod:`toolkit.parallel.sequence`), and its per-GPU share of the sequence is no real one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from toolkit.errors import UserError
from toolkit.model.attention import DENSE_MASK
from toolkit.plan.memory import GIB, ModelShape, Setup, estimate, shape_for
from toolkit.plan.placement import Fit, fit, machine_memory, machine_memory_label, placement, placement_setting
from toolkit.recipe.loading import check_recipe
from toolkit.recipe.schema import LoraSpec, Recipe, TrainSpec

TILE_TOKENS = 8192
"""Sequence tile of the tiled MLP that the advice proposes (tokens per tile per GPU)."""

MIN_SAVING = 0.005
"""A switch is advised when it saves at least this share of the stage's memory (an 8-bit optimizer for LoRA's few
trainable weights does not)."""
LORA = LoraSpec()
"""The LoRA the plan advises and the benchmarks train and plan: the schema's defaults."""
LOSS_CHUNK: int = TrainSpec.model_fields["loss_chunk_size"].default


def recipe_shape(recipe: Recipe) -> ModelShape:
    model = recipe.model
    vocab = model.train_tokenizer.vocab_size if model.train_tokenizer else None
    init = model.init_config.model_dump(exclude_none=True) if model.init_config else None  # LlamaConfig's kwargs
    return shape_for(model.name_or_path, init, vocab)


def stage_setup(recipe: Recipe, index: int, gpus: int, per_node: int | None = None) -> Setup:
    """The memory-relevant settings of stage ``index`` on ``gpus`` GPUs, ``per_node`` of them sharing a host (None:
    all)."""
    stage, train, method = recipe.train.stages[index], recipe.train, recipe.method
    lora = method.lora if method.kind == "lora" else None
    return Setup(seq_len=stage.seq_len, batch_size=stage.batch_size, gpus=gpus,
                 param_bytes=4 if recipe.model.precision == "fp32" else 2,
                 lora_rank=lora.r if lora else None, lora_targets=tuple(lora.target_modules) if lora else (),
                 fully_trained=tuple(lora.trainable_modules) if lora else (), optimizer=train.optimizer,
                 checkpointing=train.gradient_checkpointing, offload=train.activation_offload,
                 offload_fp8=train.activation_offload_dtype == "fp8",
                 loss_chunk=train.loss_chunk_size, tiles=train.tiled_mlp,
                 attention="eager" if recipe.model.attention == "eager" else "flash/sdpa",
                 dense_mask=recipe.model.attention in DENSE_MASK and train.stage_data(index).packing == "pack",
                 sequence_degree=recipe.parallel.degree, lean_norm=train.lean_rmsnorm,
                 host_processes=min(per_node, gpus) if per_node else None)


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
    if not setup.lean_norm:
        setup = setup.with_(lean_norm=True)
        yield "train.lean_rmsnorm: true", setup
    if setup.loss_chunk is None:
        setup = setup.with_(loss_chunk=LOSS_CHUNK)
        yield f"train.loss_chunk_size: {LOSS_CHUNK}", setup
    if not setup.checkpointing:
        setup = setup.with_(checkpointing=True)
        yield "train.gradient_checkpointing: true", setup
    if not setup.tiles:
        tokens = setup.batch_size * setup.seq_len // setup.sequence_degree
        setup = setup.with_(tiles=max(2, math.ceil(tokens / TILE_TOKENS)))
        yield f"train.tiled_mlp: {setup.tiles}", setup
    if setup.offload is not True and setup.offload != shape.layers:
        setup = setup.with_(offload=True)
        yield "train.activation_offload: true", setup
    degree = _sequence_degree(shape, setup.gpus)
    if degree > setup.sequence_degree:
        setup = setup.with_(sequence_degree=degree)
        yield f"parallel: {{sequence: ulysses, degree: {degree}}}", setup
    if setup.lora_rank is None:
        setup = setup.with_(lora_rank=LORA.r, lora_targets=tuple(LORA.target_modules))
        yield "method.kind: lora", setup
    if setup.optimizer == "adamw":
        setup = setup.with_(optimizer="adamw_8bit")
        yield "train.optimizer: adamw_8bit", setup


@dataclass(frozen=True)
class Advice:
    """What to switch on for a stage to fit the GPU."""

    lines: list[str]
    """The switches in order, each with the total it leads to; last, the GPUs needed where switches do not do."""
    switched: Setup | None
    """The setup with the switches on, when they alone make the stage fit."""


def advice(shape: ModelShape, setup: Setup, budget: float) -> Advice:
    """Switches to apply in order, each with the total it leads to, until the stage fits; else the GPUs needed."""
    lines = []
    current = estimate(shape, setup).total
    for label, changed in _switches(shape, setup):
        total = estimate(shape, changed).total
        if total > (1 - MIN_SAVING) * current:
            continue
        setup, current = changed, total
        lines.append(f"{label} -> {total / GIB:.1f} GiB")
        if total <= budget:
            return Advice(lines, setup)
    for gpus in (2**k for k in range(1, 11)):
        if gpus <= setup.gpus:
            continue
        grown = setup.with_(gpus=gpus, sequence_degree=max(setup.sequence_degree, _sequence_degree(shape, gpus)))
        if (total := estimate(shape, grown).total) <= budget:
            return Advice(lines + [f"{gpus} GPUs (sequence degree {grown.sequence_degree}) -> {total / GIB:.1f} GiB"],
                          None)
    return Advice(lines + ["more than 1024 GPUs with these settings: shorten the stage"], None)


def _cell(value: float) -> str:
    return f"{value / GIB:,.2f}"


@dataclass(frozen=True)
class Plan:
    """Every stage's setup and its fit on ``gpus`` GPUs of ``gpu_memory_gib`` and a host of ``host_gib``."""

    recipe: Recipe
    shape: ModelShape
    gpus: int
    gpu_memory_gib: float
    host_gib: float
    """Memory of one host, which holds the processes of one node's GPUs (all of them on one machine)."""
    host_source: str
    """Where ``host_gib`` came from: ``--host-memory`` or this machine."""
    setups: list[Setup]
    fits: list[Fit]
    """Per stage, in the recipe's order."""

    @property
    def names(self) -> list[str]:
        return [self.recipe.train.stage_name(i) for i in range(len(self.setups))]

    @property
    def fitting_stages(self) -> int:
        """Stages that fit both the GPU and the host."""
        return sum(f.gpu_fits and f.host_fits for f in self.fits)


def plan(recipe: Recipe, gpus: int, gpu_memory_gib: float, host_memory_gib: float | None = None,
         gpus_per_node: int | None = None) -> Plan:
    """The memory of every stage of ``recipe`` (checked again as a whole: it may have been changed in Python) against
    the GPUs and each host (by default this machine's RAM), which holds ``gpus_per_node`` processes (None: all)."""
    if gpus < 1:
        raise UserError(f"--gpus: must be at least 1, got {gpus}")
    if gpus_per_node is not None and gpus_per_node < 1:
        raise UserError(f"--gpus-per-node: must be at least 1, got {gpus_per_node}")
    if not 0 < gpu_memory_gib < math.inf:
        raise UserError(f"--gpu-memory: must be positive GiB, got {gpu_memory_gib:g}")
    if host_memory_gib is not None and not 0 < host_memory_gib < math.inf:
        raise UserError(f"--host-memory: must be positive GiB, got {host_memory_gib:g}")
    recipe = check_recipe(recipe)
    degree = recipe.parallel.degree
    if gpus % degree:
        raise UserError(f"parallel.degree: {degree} does not divide --gpus {gpus}, so the launch would be refused; "
                        f"plan for a multiple of {degree} GPUs (--gpus {math.ceil(gpus / degree) * degree})")
    host_gib = machine_memory() / GIB if host_memory_gib is None else host_memory_gib
    shape = recipe_shape(recipe)
    setups = [stage_setup(recipe, i, gpus, gpus_per_node) for i in range(len(recipe.train.stages))]
    fits = [fit(shape, setup, gpu_memory_gib * GIB, host_gib * GIB) for setup in setups]
    where = "--host-memory" if host_memory_gib else machine_memory_label()
    return Plan(recipe, shape, gpus, gpu_memory_gib, host_gib, where, setups, fits)


def print_plan(result: Plan) -> int:
    """Print the per-stage memory table with GPU and host verdicts and advice; returns the exit code: 1 when some
    stage does not fit the GPU or the host, else 0."""
    _print_header(result)
    _print_table(result.names, result.setups, result.fits)
    for name, setup, stage_fit in zip(result.names, result.setups, result.fits, strict=True):
        if not (stage_fit.gpu_fits and stage_fit.host_fits):
            _print_advice(name, result.shape, setup, stage_fit)
    print(f"verdict: {result.fitting_stages} of {len(result.fits)} stage(s) fit the GPU and the host")
    return 0 if result.fitting_stages == len(result.fits) else 1


def _print_header(result: Plan) -> None:
    recipe, shape, gpus = result.recipe, result.shape, result.gpus
    gpu_memory_gib, host_gib, host_source = result.gpu_memory_gib, result.host_gib, result.host_source
    print(f"plan: {recipe.name} on {gpus} GPU(s) x {gpu_memory_gib:g} GiB, host {host_gib:,.1f} GiB ({host_source}); "
          f"model {shape.params / 1e6:,.1f}M params ({shape.layers} layers, hidden {shape.hidden}, vocab "
          f"{shape.vocab}); method {recipe.method.kind}")
    if recipe.model.precision != "fp32":
        print("  bf16 compute, fp32 master weights: 4 B per trainable parameter beside its bf16 weight and gradient, "
              "and 8 B of fp32 AdamW moments (LoRA adapters are held in fp32 themselves)")
    if gpus > 1:
        node = result.setups[0].host_processes or gpus
        hosts = "the host holds all their processes" if node == gpus else \
            f"each host holds the processes of {node} of them (--gpus-per-node)"
        print(f"  weights, gradients and optimizer state sharded over {gpus} GPUs (configs/fsdp2.yaml or a "
              f"DeepSpeed ZeRO-3 config; with DDP each GPU holds them whole); {hosts}")


def _print_table(names: list[str], setups: list[Setup], fits: list[Fit]) -> None:
    estimates = [f.estimate for f in fits]
    rows = [("seq_len x batch", [f"{s.seq_len:,} x {s.batch_size}" for s in setups])]
    for part in estimates[0].parts:
        rows.append((f"{part} (GiB)", [_cell(e.parts[part]) for e in estimates]))
    rows.append(("total per GPU (GiB)", [_cell(e.total) for e in estimates]))
    rows.append(("verdict", [_verdict(f.gpu_fits) for f in fits]))
    rows.append(("host per GPU, offloaded", [_cell(e.host) for e in estimates]))
    rows.append(("host, a node's processes (GiB)", [_cell(f.host) for f in fits]))
    rows.append(("host verdict", [_verdict(f.host_fits) for f in fits]))
    label_width = max(len(label) for label, _ in rows) + 2
    width = max(len(text) for text in names + [cell for _, cells in rows for cell in cells]) + 2
    print("".join([" " * label_width] + [n.rjust(width) for n in names]))
    for label, cells in rows:
        print(label.ljust(label_width) + "".join(c.rjust(width) for c in cells))


def _verdict(fits: bool) -> str:
    return "FITS" if fits else "DOES NOT FIT"


def _print_advice(name: str, shape: ModelShape, setup: Setup, result: Fit) -> None:
    """The switches that make the GPU fit, then the placement of offloaded layers that fits the GPU and the host
    (with those switches on, where they alone make the GPU fit)."""
    gpu_budget, host_budget = result.gpu_budget, result.host_budget
    after = ""
    if not result.gpu_fits:
        print(f"{name}: needs {result.estimate.total / GIB:.1f} GiB of {gpu_budget / GIB:g}; switch on, in order:")
        advised = advice(shape, setup, gpu_budget)
        for line in advised.lines:
            print(f"  - {line}")
        if advised.switched is not None:
            setup, after = advised.switched, " with the switches above"
    if not result.host_fits:
        print(f"{name}: host needs {result.host / GIB:.1f} GiB of {host_budget / GIB:,.1f} ({result.processes} "
              f"process(es) x {result.estimate.host_needed / GIB:.1f} GiB: offloaded activations and the process)")
    found = placement(shape, setup, gpu_budget, host_budget)
    if found is None:
        print(f"{name}: no placement of offloaded layers fits both the GPU and the host{after}; shorten the stage, "
              "add host memory, or spread the sequence over more GPUs (parallel.sequence)")
        return
    placed, placed_fit = found
    where = " (the first layers' inputs in host memory)" if placed.offload else ""
    print(f"{name}: placement that fits both{after}: {placement_setting(placed, shape.layers)}{where} -> GPU "
          f"{placed_fit.estimate.total / GIB:.1f} GiB, host {placed_fit.host / GIB:.1f} GiB")
