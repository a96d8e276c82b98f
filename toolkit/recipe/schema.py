"""The typed recipe: one pydantic model per block, unknown keys rejected.

A recipe YAML is parsed into :class:`Recipe` once (see ``toolkit.recipe.loading``); every other module
receives these typed objects, never a loose dict. Field docstrings double as the reference for users. The training
data's blocks are in ``toolkit.recipe.data_spec``, the base every block shares in ``toolkit.recipe.strict``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, overload

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from toolkit.evals.stats import RULER_THRESHOLD
from toolkit.model.rope_methods import METHODS, TYPE_KEYS, native_length_of
from toolkit.recipe.data_spec import TRAIN_DATA, DataSpec, SourceSpec
from toolkit.recipe.strict import NAME_PATTERN, FieldError, Seed, Strict

Attention = Literal["auto", "flash_attention_4", "flash_attention_2", "torch_varlen", "sdpa", "eager", "flex_attention"]


class TokenizerTraining(Strict):
    """Train a small byte-level BPE tokenizer locally (no download) on the synthetic corpus."""

    vocab_size: PositiveInt = 512
    """Target vocabulary size, special tokens included."""
    corpus_documents: PositiveInt = 2000
    """How many synthetic documents to train on."""


class InitConfig(Strict):
    """LlamaConfig keyword arguments for a randomly initialised Llama (tiny models for CPU runs); a size left out is
    LlamaConfig's default (the vocabulary: the tokenizer's)."""

    vocab_size: PositiveInt | None = None
    """Vocabulary size; ``None``: the tokenizer's (a smaller one is refused when the model is built)."""
    hidden_size: PositiveInt | None = None
    """Width of the residual stream (LlamaConfig's default 4096)."""
    intermediate_size: PositiveInt | None = None
    """Width of the MLP's hidden layer (LlamaConfig's default 11008)."""
    num_hidden_layers: PositiveInt | None = None
    """Number of decoder layers (LlamaConfig's default 32)."""
    num_attention_heads: PositiveInt | None = None
    """Query heads per layer (LlamaConfig's default 32)."""
    num_key_value_heads: PositiveInt | None = None
    """Key/value heads per layer, a divisor of ``num_attention_heads`` (grouped-query attention); ``None``: as many."""
    head_dim: PositiveInt | None = None
    """Width of one attention head; ``None``: ``hidden_size / num_attention_heads``."""
    max_position_embeddings: PositiveInt | None = None
    """The model's native context length, which RoPE stages extend (LlamaConfig's default 2048)."""
    rope_parameters: dict[str, Any] | None = None
    """RoPE as LlamaConfig takes it (``rope_type``, ``rope_theta``, the type's keys); ``None``: default, theta 10000."""
    tie_word_embeddings: bool | None = None
    """Share the input embedding's weights with the output head (LlamaConfig's default: false)."""
    rope_theta: PositiveFloat | None = None
    """The older form of ``rope_parameters.rope_theta``, which LlamaConfig moves there."""
    rms_norm_eps: PositiveFloat | None = None
    """The RMSNorms' epsilon (LlamaConfig's default 1e-6)."""
    initializer_range: PositiveFloat | None = None
    """Standard deviation of the random initial weights (LlamaConfig's default 0.02)."""
    hidden_act: str | None = None
    """The MLP's activation, a name transformers knows (LlamaConfig's default ``silu``)."""
    attention_bias: bool | None = None
    """Biases on the attention projections (LlamaConfig's default: none)."""
    mlp_bias: bool | None = None
    """Biases on the MLP projections (LlamaConfig's default: none)."""
    attention_dropout: NonNegativeFloat | None = None
    """Dropout on the attention weights (LlamaConfig's default 0)."""
    bos_token_id: NonNegativeInt | None = None
    """``None``: the tokenizer's (as for the other two ids)."""
    eos_token_id: NonNegativeInt | None = None
    pad_token_id: NonNegativeInt | None = None

    @model_validator(mode="after")
    def _heads_divide(self) -> InitConfig:
        """The heads divide as attention needs (what LlamaConfig checks besides is checked when it is built)."""
        heads, kv_heads = self.num_attention_heads, self.num_key_value_heads
        if heads and kv_heads and heads % kv_heads:
            raise FieldError("num_key_value_heads", f"{kv_heads} does not divide num_attention_heads {heads} "
                             "(grouped-query attention shares each K/V head among a whole group)")
        if heads and self.hidden_size and self.head_dim is None and self.hidden_size % heads:
            raise FieldError("hidden_size", f"{self.hidden_size} is not a multiple of num_attention_heads {heads}")
        return self

    @model_validator(mode="after")
    def _rope_parameters_are_a_rope(self) -> InitConfig:
        """``rope_parameters`` names a RoPE type transformers knows (:data:`METHODS`) with the keys it requires, and
        its theta and the keys the native length is read from (:func:`native_length_of`) are positive numbers: what
        would otherwise stop a run at the model's build with a traceback, or train on a meaningless rotation."""
        rope = self.rope_parameters or {}
        kind = rope.get("rope_type", "default")
        if kind not in METHODS:
            raise FieldError("rope_parameters.rope_type", f"{kind!r} is not one of {', '.join(METHODS)}")
        for key in ("rope_theta", "factor", "original_max_position_embeddings"):
            value = rope.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
                raise FieldError(f"rope_parameters.{key}", f"{value!r} is not a positive number")
        method = METHODS[kind]
        for key in ("factor", *method.required) if method.keys else ():
            if rope.get(key) is None:
                raise FieldError(f"rope_parameters.{key}", f"rope_type {kind!r} needs it")
        return self


MODEL_SIZE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads", "head_dim", "vocab_size")
"""The :class:`InitConfig` keys that size a model's weights, named as a model's ``config.json`` names them."""


class ModelSpec(Strict):
    """What to load: a hub id or local path, or a random model built from an inline Llama config."""

    name_or_path: str | None = None
    """Hub id (``meta-llama/Meta-Llama-3-8B``) or local folder; relative paths resolve against the recipe."""
    init_config: InitConfig | None = None
    """A randomly initialised Llama built from these LlamaConfig keyword arguments (tiny models for CPU runs)."""
    tokenizer: str | None = None
    """Tokenizer hub id or path; defaults to ``name_or_path``."""
    train_tokenizer: TokenizerTraining | None = None
    """Train a small tokenizer locally instead of loading one (for synthetic-data recipes)."""
    backend: Literal["transformers", "unsloth"] = "transformers"
    """``unsloth`` loads through unsloth's FastLanguageModel (GPU only, optional extra)."""
    attention: Attention = "auto"
    """Attention kernel; ``auto`` on a CUDA/ROCm GPU picks flash_attention_4 (the fa4 extra, Hopper or newer, bf16/fp16,
    training), else flash_attention_2 (installed, bf16/fp16), else PyTorch's varlen flash attention ``torch_varlen``
    (CUDA, bf16/fp16), else flex_attention, else sdpa; sdpa elsewhere. sdpa and eager keep packed documents apart
    with a dense L×L mask (see ``toolkit.model.attention``). Under ``parallel.sequence: context_parallel`` ring
    attention runs over sdpa only: ``auto`` is sdpa there, and any other kernel is refused before the run starts."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Compute precision; ``auto`` is bf16 where the device supports it, else fp32. bf16 runs keep fp32 master
    weights of what they train (docs/scaling.md). fp16 does not train here: it needs loss scaling, which the toolkit
    does not do (use bf16 on Ampere or newer, fp32 elsewhere); ``make eval PRECISION=fp16`` evaluates in fp16."""
    trust_remote_code: bool = False
    """Run model code shipped with the checkpoint. Off unless you trust its author."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to pin."""

    @field_validator("precision", mode="before")
    @classmethod
    def _no_fp16_training(cls, value: Any) -> Any:
        if value == "fp16":
            raise ValueError("fp16 does not train here (it needs loss scaling, which the toolkit does not do): "
                             "use bf16 on Ampere or newer GPUs, fp32 elsewhere")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.name_or_path is None) == (self.init_config is None):
            raise ValueError("set exactly one of name_or_path or init_config")
        if self.init_config is not None and self.tokenizer is None and self.train_tokenizer is None:
            raise ValueError("a model built from init_config needs tokenizer or train_tokenizer")
        return self

    def stated_native_length(self) -> int | None:
        """The native length where the recipe states it, offline: a model built from ``init_config`` with its
        ``max_position_embeddings``, read as a run reads it from the model's config (:func:`native_length_of`);
        ``None`` otherwise (a run reads it from the model's config, ``toolkit.training.model_fit``)."""
        init = self.init_config
        return native_length_of(init) if init and init.max_position_embeddings else None


class LoraSpec(Strict):
    """LoRA adapter settings (peft)."""

    r: PositiveInt = 16
    alpha: PositiveFloat = 32.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]
    trainable_modules: list[str] = []
    """Modules trained fully beside the adapter, as LongLoRA does: e.g. ``[embed_tokens, norm]``."""


class MethodSpec(Strict):
    """Full-parameter or LoRA fine-tuning."""

    kind: Literal["full", "lora"] = "full"
    lora: LoraSpec = LoraSpec()
    merge_on_save: bool = False
    """LoRA only: also write merged full weights to ``final/merged``."""


class RopeSpec(Strict):
    """RoPE setting for a stage, written into transformers' ``config.rope_parameters``."""

    type: str = "default"
    """The method: a name of ``toolkit.model.rope_methods.METHODS`` (default, linear, dynamic, yarn, llama3,
    longrope)."""
    theta: PositiveFloat | Literal["auto"] | None = None
    """Explicit base frequency; ``auto`` derives it for the stage length (see ``toolkit.model.rope.theta_for_length``);
    ``None`` keeps the model's."""
    factor: PositiveFloat | None = None
    """Scaling factor for linear/dynamic/yarn/llama3/longrope; ``None`` derives seq_len / original length."""
    original_max_position_embeddings: PositiveInt | None = None
    """The model's native context; ``None`` takes it from the model config."""
    beta_fast: PositiveFloat | None = None
    beta_slow: PositiveFloat | None = None
    attention_factor: PositiveFloat | None = None
    low_freq_factor: PositiveFloat | None = None
    high_freq_factor: PositiveFloat | None = None
    short_factor: list[float] | None = None
    long_factor: list[float] | None = None

    @field_validator("type")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown RoPE method {value!r}; one of {', '.join(METHODS)}")
        return value

    @model_validator(mode="after")
    def _keys_fit_type(self) -> RopeSpec:
        method = METHODS[self.type]
        for key in sorted({"factor", *TYPE_KEYS} - method.keys):
            if getattr(self, key) is not None:
                raise FieldError(key, f"does not apply to rope type {self.type!r}")
        missing = [key for key in method.required if getattr(self, key) is None]
        if missing:
            raise FieldError("type", f"{self.type} needs {' and '.join(missing)}")
        return self

    @overload
    def original_length(self, native_length: int) -> int: ...

    @overload
    def original_length(self, native_length: None) -> int | None: ...

    def original_length(self, native_length: int | None) -> int | None:
        """The length the setting scales from: ``original_max_position_embeddings``, else the model's native length
        (None when neither is known)."""
        return self.original_max_position_embeddings or native_length

    def shortfall(self, seq_len: int, native_length: int | None) -> str | None:
        """Why an explicit ``factor`` x the original length (:meth:`original_length`) covers fewer than ``seq_len``
        tokens; None when it covers them or nothing is known."""
        original = self.original_length(native_length)
        if not METHODS[self.type].scaled or not self.factor or not original:
            return None
        covered = int(self.factor * original)
        if covered >= seq_len:
            return None
        return f"{self.factor} x original length {original} covers {covered} tokens, less than seq_len {seq_len}"



class StageSpec(Strict):
    """One stage of progressive extension; stage k starts from stage k-1's weights."""

    name: str | None = Field(None, pattern=r"^[^./\\][^/\\]*$")
    """Names the stage's evaluation folder (``eval/stage-<index>-<name>``): no path separator and no leading dot, so
    the folder stays inside ``eval/`` (any other character, as ever: runs recorded with them still read)."""
    seq_len: PositiveInt
    """Training sequence length in tokens."""
    rope: RopeSpec = RopeSpec()
    max_steps: PositiveInt | None = None
    """Optimizer steps; or give max_tokens."""
    max_tokens: PositiveInt | None = None
    """Token budget; converted to steps as max_tokens / (seq_len * batch_size * grad_accum * data-parallel groups),
    rounded up, at least 1; the groups are the processes over ``parallel.degree`` (``toolkit.training.loop``)."""
    lr: PositiveFloat = 2e-5
    batch_size: PositiveInt = 1
    """Sequences per device per micro-step."""
    grad_accum: PositiveInt = 1
    warmup_steps: int = Field(0, ge=0)
    data: DataSpec | None = None
    """Overrides ``train.data`` for this stage."""
    evaluate: bool | None = None
    """Run the eval suites after this stage; ``None`` follows ``eval.after_each_stage``. The last stage is
    always evaluated."""

    @model_validator(mode="after")
    def _budget(self) -> StageSpec:
        if (self.max_steps is None) == (self.max_tokens is None):
            raise ValueError("set exactly one of max_steps or max_tokens")
        return self


class TrainSpec(Strict):
    """The optimisation shared by every stage."""

    stages: list[StageSpec] = Field(min_length=1)
    data: DataSpec = DataSpec()
    max_steps: PositiveInt | None = None
    """Cap on steps for every stage (quick trials: ``train.max_steps=5``)."""
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: PositiveFloat | None = 1.0
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    gradient_checkpointing: bool = False
    activation_offload: bool | PositiveInt = False
    """With gradient checkpointing: keep the saved layer inputs in pinned host memory, for every layer (``true``) or
    for the first N layers (the rest keep theirs on the GPU); copies run on a side stream."""
    activation_offload_dtype: Literal["native", "fp8"] = "native"
    """How offloaded layer inputs are stored: as computed, or ``fp8`` (e4m3 with a per-tensor scale: half the host
    memory of bf16, a rounded input for the recompute)."""
    loss_chunk_size: PositiveInt | None = 4096
    """Tokens per chunk of the cross-entropy, so full-vocabulary logits never exist for the whole
    sequence; ``None`` computes the plain loss."""
    tiled_mlp: PositiveInt | None = None
    """Run each MLP over this many sequence tiles (saves activation memory at long lengths)."""
    lean_rmsnorm: bool = True
    """Llama RMSNorms keep their bf16/fp16 input for the backward, not a float32 copy, and run in chunks of rows
    (``toolkit.memory.lean_norm``; the same numbers): a layer keeps 6 bytes per hidden unit and token less, 24 KiB a
    token at Llama-3-8B's width. fp32 runs are unaffected."""
    save_every: PositiveInt | None = None
    """Checkpoint every N steps (and always at each stage's end)."""
    keep_last: PositiveInt = 2
    resume: bool = False
    """Continue from the latest checkpoint in the run folder."""
    stage_length_must_grow: bool = True
    """Reject a stage shorter than the one before it."""

    @model_validator(mode="after")
    def _offload_needs_checkpointing(self) -> TrainSpec:
        if self.activation_offload and not self.gradient_checkpointing:
            raise FieldError("activation_offload", "needs gradient_checkpointing: true")
        if self.activation_offload_dtype != "native" and not self.activation_offload:
            raise FieldError("activation_offload_dtype", "needs activation_offload: true or a number of layers")
        return self

    @model_validator(mode="after")
    def _arena_stages(self) -> TrainSpec:
        """A run with an arena source trains on arena sources alone (the objective restricts every labelled token to
        the label tokens), all with the same label tokens, each comparison fitting its stage."""
        specs = [(i, field, spec) for i in range(len(self.stages)) for field, spec in self.stage_sources(i)]
        arena = [(i, spec) for i, _, spec in specs if spec.format == "arena"]
        if not arena:
            return self
        for i, field, spec in specs:
            where = field.removeprefix("train.")  # a FieldError's path is below this block
            if spec.format != "arena":
                raise FieldError(f"{where}.format", f"{spec.format} beside format: arena sources; an arena run "
                                 "trains only the answer among the label tokens, so every source must be arena")
            if spec.label_tokens != arena[0][1].label_tokens:
                raise FieldError(f"{where}.label_tokens", f"{list(spec.label_tokens)} differs from "
                                 f"{list(arena[0][1].label_tokens)}; one run has one set of label tokens")
            if (spec.truncate_tokens or 0) > self.stages[i].seq_len:
                raise FieldError(f"{where}.truncate_tokens", f"{spec.truncate_tokens} is longer than "
                                 f"stages[{i}].seq_len {self.stages[i].seq_len}")
        return self

    @model_validator(mode="after")
    def _lengths_grow(self) -> TrainSpec:
        if self.stage_length_must_grow:
            for i in range(1, len(self.stages)):
                if self.stages[i].seq_len < self.stages[i - 1].seq_len:
                    raise FieldError(
                        f"stages[{i}].seq_len", f"{self.stages[i].seq_len} is shorter than stages[{i - 1}].seq_len "
                        f"{self.stages[i - 1].seq_len} (set train.stage_length_must_grow: false if meant)")
        return self

    def choice_tokens(self) -> tuple[str, str, str] | None:
        """The label tokens of an arena run (the objective's softmax is over these alone); None for other runs."""
        first = self.stage_sources(0)[0][1]
        return first.label_tokens if first.format == "arena" else None

    def stage_name(self, index: int) -> str:
        """Stage ``index``'s name, or ``stage-<index>`` when it has none."""
        return self.stages[index].name or f"stage-{index}"

    def stage_data(self, index: int) -> DataSpec:
        """The data of stage ``index``: its own, or the shared ``train.data``."""
        return self.stages[index].data or self.data

    def data_field(self, index: int) -> str:
        """Where the recipe holds the data of stage ``index``, as errors name it: ``train.stages[<index>].data`` for
        its own, else ``train.data``."""
        return f"train.stages[{index}].data" if self.stages[index].data is not None else TRAIN_DATA

    def packed_field(self) -> str | None:
        """The ``packing`` field of the first stage that packs several documents into a row, None when none does."""
        return next((f"{self.data_field(i)}.packing" for i in range(len(self.stages))
                     if self.stage_data(i).packing == "pack"), None)

    def stage_sources(self, index: int) -> list[tuple[str, SourceSpec]]:
        """``(field, spec)`` of every source of stage ``index``: where the recipe holds it (``train.data``,
        ``train.stages[1].data.mixture[2]``, ...) and its settings."""
        data = self.stage_data(index)
        return [(data.source_field(self.data_field(index), i), spec) for i, (_, _, spec) in enumerate(data.sources())]


class ParallelSpec(Strict):
    """Sequence parallelism for 256K-1M+ contexts (GPU clusters)."""

    sequence: Literal["none", "ulysses", "context_parallel"] = "none"
    degree: PositiveInt = 1
    """Ranks that share one sequence."""
    timeout_minutes: PositiveInt = 180
    """How long a process waits for the others at a collective (NCCL's default, 10 minutes, is shorter than a long
    needle grid that the main process evaluates while the others wait)."""

    @model_validator(mode="after")
    def _degree(self) -> ParallelSpec:
        if self.sequence == "none" and self.degree != 1:
            raise FieldError("degree", "degree > 1 needs sequence: ulysses or context_parallel")
        return self


class VerdictSpec(Strict):
    """What the run claims, checked on its own evaluations (printed at the end of the run, at the top of the
    report, and by `python -m toolkit report RUN --check`)."""

    task: str = Field(pattern=r"^[^/]+/[^/]+$")
    """``<suite name>/<task key>`` of a niah task, e.g. ``niah-tiny/passkey``."""
    native_min: float = Field(0.95, ge=0, le=1)
    """Least accuracy at the native (trained) length, model before extension."""
    extended_min: float = Field(0.90, ge=0, le=1)
    """Least accuracy at the last stage's seq_len, final model."""
    extended_before_max: float | None = Field(None, ge=0, le=1)
    """Most accuracy at the last stage's seq_len before extension (the task is out of the base model's reach)."""
    retention_suites: list[str] = ["short-context"]
    """Suite names whose every task's score ratio final / before extension must reach ``retention_min``."""
    retention_min: float = Field(0.95, ge=0, le=2)
    effective_threshold: float = Field(RULER_THRESHOLD, ge=0, le=1)
    """RULER's threshold for the effective context length (reported, not checked)."""


class EvalSpec(Strict):
    """Suites run on the starting model and after every stage, for a before/after comparison."""

    suites: list[str] = []
    """Suite YAML paths (relative to the recipe or the working directory)."""
    before: bool = True
    after_each_stage: bool = True
    verdict: VerdictSpec | None = None
    """The run's claim (needle accuracy before/after extension, short-context retention), checked after the run;
    refused before it (``validate``, ``train``) where the evaluations the recipe runs cannot give it
    (``toolkit.recipe.loading.check_verdict_evaluations``)."""


class LoggingSpec(Strict):
    backend: Literal["none", "tensorboard", "wandb"] = "none"
    every: PositiveInt = 10
    """Log every N optimizer steps (``metrics.jsonl`` always)."""
    project: str | None = None
    """wandb project."""


class OutputSpec(Strict):
    dir: str | None = None
    """Run folder; defaults to ``runs/<name>``."""


class Recipe(Strict):
    """A complete recipe: model, method, stages, data, evaluation and output."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    seed: Seed = 0
    model: ModelSpec
    method: MethodSpec = MethodSpec()
    train: TrainSpec
    parallel: ParallelSpec = ParallelSpec()
    eval: EvalSpec = EvalSpec()
    logging: LoggingSpec = LoggingSpec()
    output: OutputSpec = OutputSpec()

    def evaluates(self, index: int | None) -> bool:
        """Whether the eval suites run on the model after stage ``index`` (``None``: the starting model, under
        ``eval.before``); after the last stage always, where there are suites. What a run evaluates and what
        ``eval.verdict`` is checked against up front both read it."""
        if not self.eval.suites:
            return False
        if index is None:
            return self.eval.before
        if index == len(self.train.stages) - 1:
            return True
        chosen = self.train.stages[index].evaluate
        return self.eval.after_each_stage if chosen is None else chosen

    def evaluated_models(self) -> list[int | None]:
        """Every model the eval suites run on (:meth:`evaluates`), in order: ``None`` for the starting model, else the
        index of the stage after which."""
        return [index for index in (None, *range(len(self.train.stages))) if self.evaluates(index)]

    @property
    def run_dir(self) -> Path:
        return Path(os.path.expanduser(self.output.dir)) if self.output.dir else Path("runs") / self.name

    @model_validator(mode="after")
    def _rope_covers_lengths(self) -> Recipe:
        """Checked here where the recipe states the native length (:meth:`ModelSpec.stated_native_length`); a run
        checks every model's config again before loading it (``toolkit.training.model_fit``)."""
        native = self.model.stated_native_length()
        for i, stage in enumerate(self.train.stages):
            problem = stage.rope.shortfall(stage.seq_len, native)
            if problem:
                raise FieldError(f"train.stages[{i}].rope.factor", problem)
        return self

    @model_validator(mode="after")
    def _context_parallel_packing(self) -> Recipe:
        """Ring attention runs causal over the whole row (no mask), so packed documents would see each other."""
        packed = self.train.packed_field()
        if self.parallel.sequence == "context_parallel" and packed:
            raise FieldError(packed, "pack under parallel.sequence: context_parallel lets packed documents attend to "
                             "each other (ring attention is causal over the whole row); use split or pad")
        return self

    @model_validator(mode="after")
    def _ulysses_batch_size(self) -> Recipe:
        """DeepSpeed's Ulysses attention is built for one micro-batch size (it reshapes by it)."""
        if self.parallel.sequence == "ulysses":
            first = self.train.stages[0].batch_size
            for i, stage in enumerate(self.train.stages):
                if stage.batch_size != first:
                    raise FieldError(f"train.stages[{i}].batch_size", f"{stage.batch_size} differs from stages[0]'s "
                                     f"{first}; under parallel.sequence: ulysses every stage uses one micro-batch size "
                                     "(vary grad_accum instead)")
        return self
