"""Memory model of one training step of a Llama decoder: what each part costs per GPU, in bytes.

Counts follow what autograd keeps for transformers' Llama layers (bf16 activations ``a = 2`` bytes):
per token and layer, each RMSNorm keeps its float32 input (``4H``), the attention block keeps the normed
input, q, k, v and the attention output (``a (4H + 2 kv_dim)``; flash/SDPA keep no ``L^2`` matrix), and the
SwiGLU MLP keeps its normed input, gate, up, SiLU(gate) and their product (``a (H + 4I)``). Checkpointing
keeps only each layer's input (``a H``) and recomputes one layer at a time in the backward; offload moves
those inputs to host memory (the first N layers', see ``toolkit.memory.checkpointing``), where CUDA's caching
host allocator rounds each pinned block up to a power of two. The recomputed layer's backward also holds the
gradients of its output and of a norm's output (``2 a H``) and the float32 temporaries of an RMSNorm's backward
(``NORM_BACKWARD_COPIES x 4H``); the tiled MLP divides only the MLP's own tensors, not the norm before it. The lean
RMSNorm (``toolkit.memory.lean_norm``) keeps no float32 copy, and the second norm of a layer keeps its input as it came
(``a H``) instead: ``(8 - a) H`` per token less; its backward's float32 temporaries exist for one chunk of rows at a
time (``LEAN_NORM_CHUNK_COPIES x 4H x`` the chunk's rows), not per token.
Logits cost ``(a + 8) V`` bytes per token (head output, float32 log-softmax kept for the backward, its gradient).
The caching allocator holds more than it hands out (``ALLOCATOR_RESERVE_PER_HIDDEN``). Sharding (FSDP2 / ZeRO-3)
divides weights, gradients and optimizer state by the GPU count and gathers about two layers at a time;
sequence parallelism divides every activation term by its degree. The calibration against measured peaks is in
docs/benchmarks.md and docs/scaling.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from toolkit.errors import UserError, reason
from toolkit.file_reading import read_json_object
from toolkit.memory import lean_norm
from toolkit.memory.offload import offloaded_layers
from toolkit.model.attention import dense_mask_size
from toolkit.recipe.schema import MODEL_SIZE_KEYS
from toolkit.run_folder import MODEL_CONFIG

GIB = 1024**3
RUNTIME_OVERHEAD = int(1.5 * GIB)
"""CUDA context, cuBLAS/NCCL workspaces and allocator slack, measured as 1-2 GiB on H100s."""
NORM_BACKWARD_COPIES = 3
"""Float32 ``[tokens, hidden]`` temporaries alive at once in an RMSNorm's backward (autograd of its decomposed ops:
the incoming gradient cast to float32, the gradient through ``x * rsqrt``, the one through ``pow``)."""
LEAN_NORM_CHUNK_COPIES = 4
"""Float32 ``[chunk rows, hidden]`` temporaries alive at once in the lean RMSNorm's backward (the row times its
reciprocal RMS, the incoming gradient, and two products of the closed form): counted by the probe's live tensors on
CPU at 16K and 32K tokens (docs/scaling.md)."""
ALLOCATOR_RESERVE_PER_HIDDEN = 8
"""Bytes per token and hidden unit that PyTorch's caching allocator reserves beyond what is allocated at long
lengths (blocks of the size of a float32 hidden state that it cannot split for smaller requests). H200, 8B
shapes, LoRA: reserved minus peak allocated 18.8 GiB at 512K, 4.8 GiB at 128K, 2.0 GiB at 64K (8 x 4096 B per
token: 16, 4 and 2 GiB), with torch's default allocator settings (docs/scaling.md: expandable segments)."""
HOST_OVERHEAD = int(4.6 * GIB)
"""Host memory of one training process besides the offloaded activations (Python, torch and CUDA libraries, the
CUDA context's host side, tokenizer, data): H200, 2-layer 8B probe at 512K, 12.6 GiB resident of which 8 GiB were
the offloaded inputs."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-architecture decoder that memory depends on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False
    head_dim: int | None = None

    def llama_config(self) -> dict[str, Any]:
        """The shape as LlamaConfig keyword arguments (:func:`shape_from_config` reads them back)."""
        return dict(hidden_size=self.hidden, intermediate_size=self.intermediate, num_hidden_layers=self.layers,
                    num_attention_heads=self.heads, num_key_value_heads=self.kv_heads, vocab_size=self.vocab,
                    tie_word_embeddings=self.tied, **({"head_dim": self.head_dim} if self.head_dim else {}))

    @property
    def head_size(self) -> int:
        """Dimensions per attention head: ``head_dim``, else hidden / heads."""
        return self.head_dim or self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_size

    @property
    def projections(self) -> dict[str, tuple[int, int]]:
        """Each linear projection of a layer: (in, out) features."""
        q_out = self.heads * self.head_size
        return {"q_proj": (self.hidden, q_out), "k_proj": (self.hidden, self.kv_dim),
                "v_proj": (self.hidden, self.kv_dim), "o_proj": (q_out, self.hidden),
                "gate_proj": (self.hidden, self.intermediate), "up_proj": (self.hidden, self.intermediate),
                "down_proj": (self.intermediate, self.hidden)}

    @property
    def layer_params(self) -> int:
        return sum(inputs * outputs for inputs, outputs in self.projections.values()) + 2 * self.hidden

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * self.layer_params + self.hidden

    def module_params(self, name: str) -> int:
        """Parameters of every module whose name ends with ``name`` (peft's suffix matching)."""
        if name in self.projections:
            inputs, outputs = self.projections[name]
            return self.layers * inputs * outputs
        norms = {"input_layernorm": self.layers * self.hidden, "post_attention_layernorm": self.layers * self.hidden,
                 "norm": (2 * self.layers + 1) * self.hidden}  # "norm" also matches the layer norms
        return {"embed_tokens": self.vocab * self.hidden, "lm_head": self.vocab * self.hidden, **norms}.get(name, 0)

    def lora_params(self, rank: int, targets: list[str]) -> int:
        """Adapter parameters: ``rank * (in + out)`` for every targeted projection of every layer."""
        return sum(self.layers * rank * sum(self.projections[t]) for t in targets if t in self.projections)


LLAMA3_8B = ModelShape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256)
_LLAMA3_70B = ModelShape(hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8, vocab=128256)
KNOWN_SHAPES: dict[str, ModelShape] = {
    **{f"meta-llama/{name}{suffix}": LLAMA3_8B for name in ("Meta-Llama-3-8B", "Llama-3.1-8B", "Meta-Llama-3.1-8B")
       for suffix in ("", "-Instruct")},
    **{f"meta-llama/{name}{suffix}": _LLAMA3_70B
       for name in ("Meta-Llama-3-70B", "Llama-3.1-70B", "Meta-Llama-3.1-70B", "Llama-3.3-70B")
       for suffix in ("", "-Instruct")},
    "gradientai/Llama-3-8B-Instruct-Gradient-1048k": LLAMA3_8B,
}


DERIVED_SIZE_KEYS = ("num_key_value_heads", "head_dim")
"""The sizes of :data:`MODEL_SIZE_KEYS` a ``config.json`` may leave out: Llama derives them from the others
(``num_attention_heads``, ``hidden_size // num_attention_heads``), as :func:`shape_from_config` does."""
SIZE_KEYS = tuple(key for key in MODEL_SIZE_KEYS if key not in DERIVED_SIZE_KEYS)
"""The sizes a model's ``config.json`` must give for a plan: :data:`MODEL_SIZE_KEYS` (every size of the weights) but
:data:`DERIVED_SIZE_KEYS` (a recipe's ``init_config`` may leave any of them to LlamaConfig's defaults)."""


def shape_from_config(config: dict[str, Any]) -> ModelShape:
    """A shape from the sizes of LlamaConfig keyword arguments or a ``config.json`` (LlamaConfig's defaults fill the
    gaps; no LlamaConfig is built, whose checks refuse other architectures' sizes, e.g. a ``head_dim`` that does not
    divide the hidden size). A ValueError naming the key when a size is no integer."""
    import dataclasses

    from transformers import LlamaConfig

    defaults = {f.name: f.default for f in dataclasses.fields(LlamaConfig) if f.default is not dataclasses.MISSING}
    sizes = {**defaults, **{key: value for key, value in config.items() if value is not None}}

    def size(key: str) -> int:
        value = sizes[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: {value!r} is not an integer")
        return value

    heads = size("num_attention_heads")
    return ModelShape(hidden=size("hidden_size"), intermediate=size("intermediate_size"),
                      layers=size("num_hidden_layers"), heads=heads,
                      kv_heads=size("num_key_value_heads") if sizes.get("num_key_value_heads") else heads,
                      vocab=size("vocab_size"), tied=bool(sizes["tie_word_embeddings"]),
                      head_dim=size("head_dim") if sizes.get("head_dim") else None)


def shape_for(name_or_path: str | None, init_config: dict[str, Any] | None, vocab: int | None = None) -> ModelShape:
    """The model's shape without downloading anything: inline config, local ``config.json``, or the table."""
    if init_config is not None:
        return shape_from_config({**({"vocab_size": vocab} if vocab else {}), **init_config})
    assert name_or_path is not None
    local = Path(name_or_path) / MODEL_CONFIG
    if local.is_file():
        config = read_json_object(local)
        if missing := [key for key in SIZE_KEYS if config.get(key) is None]:
            raise UserError(f"{local}: no {', '.join(missing)}: plan reads a Llama-architecture model's sizes "
                            f"(this one is {config.get('model_type', 'of no model_type')})")
        try:
            return shape_from_config(config)
        except ValueError as exc:  # a size that is no integer
            raise UserError(f"{local}: {reason(exc)}") from None
    if name_or_path in KNOWN_SHAPES:
        return KNOWN_SHAPES[name_or_path]
    raise UserError(f"model.name_or_path: no shape known for {name_or_path!r} without a download; give a local folder "
                    f"with config.json, or plan with model.init_config holding its sizes (hidden_size, ...)")


@dataclass(frozen=True)
class Setup:
    """Everything about one stage that memory depends on."""

    seq_len: int
    batch_size: int = 1
    gpus: int = 1
    param_bytes: int = 2
    lora_rank: int | None = None
    lora_targets: tuple[str, ...] = ()
    fully_trained: tuple[str, ...] = ()
    optimizer: str = "adamw"
    checkpointing: bool = False
    offload: bool | int = False
    """Layers whose checkpointed input lives in host memory: all (True), none (False) or the first N."""
    offload_fp8: bool = False
    loss_chunk: int | None = None
    tiles: int | None = None
    attention: str = "sdpa"
    dense_mask: bool = False
    """Rows holding several documents reach sdpa or eager, so transformers builds a ``[B,1,L,L]`` mask."""
    sequence_degree: int = 1
    host_processes: int | None = None
    """The processes that share one host's memory (one per GPU of a node); None: all ``gpus``."""
    lean_norm: bool = False
    """RMSNorms keep their low-precision input, not a float32 copy, and run their backward in chunks of rows
    (``train.lean_rmsnorm``)."""

    def with_(self, **changes: Any) -> Setup:
        return replace(self, **changes)


@dataclass
class Estimate:
    """Bytes per GPU by part (``parts``), and bytes of host memory for offloaded activations (``host``, pinned
    blocks as allocated) per GPU."""

    parts: dict[str, int] = field(default_factory=dict)
    host: int = 0

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def allocated(self) -> int:
        """What a device's allocator reports as allocated at the peak: the total without its reserve and the
        runtime's overhead."""
        return self.total - self.parts["allocator reserve"] - self.parts["runtime overhead"]

    @property
    def host_needed(self) -> int:
        """Host memory of one training process: the offloaded activations and the process itself."""
        return self.host + HOST_OVERHEAD


def _trainable(shape: ModelShape, setup: Setup) -> tuple[int, int, int, int]:
    """(trainable parameters, the bytes they are held in, bytes of the frozen copies peft keeps of fully trained
    modules, trainable parameters with a float32 master).

    LoRA adapters are held in float32 (``toolkit.model.lora.apply_lora``); every other trainable parameter in the
    model's dtype, stepped through a float32 master when that is lower (``toolkit.memory.master_weights``; FSDP2 and
    DeepSpeed keep theirs sharded)."""
    low = setup.param_bytes < 4
    if setup.lora_rank is None:
        return shape.params, shape.params * setup.param_bytes, 0, shape.params if low else 0
    adapters = shape.lora_params(setup.lora_rank, list(setup.lora_targets))
    full = sum(shape.module_params(name) for name in setup.fully_trained)
    return adapters + full, adapters * 4 + full * setup.param_bytes, full * setup.param_bytes, full if low else 0


def estimate(shape: ModelShape, setup: Setup) -> Estimate:
    """Peak memory per GPU of one training step of ``shape`` under ``setup``."""
    a, h = setup.param_bytes, shape.hidden
    sharded = setup.gpus > 1
    trainable, trainable_bytes, frozen_copies, mastered = _trainable(shape, setup)
    weights: float = shape.params * a + frozen_copies + (trainable_bytes if setup.lora_rank else 0)
    weights = weights / setup.gpus + 2 * shape.layer_params * a if sharded else weights
    # AdamW keeps two float32 moments per trainable parameter (the masters' or float32 adapters' dtype); the 8-bit
    # optimizers one byte each
    eight_bit = setup.optimizer in ("adamw_8bit", "paged_adamw_8bit")
    optimizer_state = 2 * trainable if eight_bit else 8 * trainable

    tokens = setup.batch_size * setup.seq_len / setup.sequence_degree  # per GPU
    per_layer_kept, working = _layer_activations(shape, setup)
    offloaded = _offloaded_layers(shape, setup)
    on_gpu = max(shape.layers - offloaded, min(offloaded, 2))  # offloaded: the one recomputed, the next fetched
    end_of_forward = _norm_input(setup) * h + 2 * a * h  # the final norm's input and output, the loss's copy of it
    eager = setup.attention == "eager"
    attention_matrix = setup.batch_size * shape.heads * setup.seq_len**2 / setup.sequence_degree * (4 + a)
    logits_tokens = min(tokens, setup.loss_chunk) if setup.loss_chunk else tokens
    parts = {
        "weights": int(weights),
        "gradients": int(trainable_bytes / setup.gpus),
        "fp32 master weights": int(4 * mastered / setup.gpus),
        "optimizer state": int(optimizer_state / setup.gpus),
        "activations kept": int(on_gpu * per_layer_kept * tokens),
        "layer working set": int(max(working * tokens + _lean_norm_chunk(h, setup, tokens), end_of_forward * tokens)),
        "logits": int(logits_tokens * shape.vocab * (a + 8)),
        "attention matrix": int(attention_matrix * (1 if setup.checkpointing else shape.layers)) if eager else 0,
        "attention mask": dense_mask_size("eager" if eager else "sdpa", setup.batch_size, setup.seq_len, a)
        if setup.dense_mask else 0,
        "allocator reserve": int(ALLOCATOR_RESERVE_PER_HIDDEN * h * tokens),
        "runtime overhead": RUNTIME_OVERHEAD,
    }
    return Estimate(parts=parts, host=offloaded * pinned_block(int(per_layer_kept * tokens / a * _stored_bytes(setup))))


def _layer_activations(shape: ModelShape, setup: Setup) -> tuple[float, float]:
    """(bytes per token each layer keeps for the backward, bytes per token of the layer being worked on: what its
    backward holds, the recomputed activations with checkpointing)."""
    a, h, i = setup.param_bytes, shape.hidden, shape.intermediate
    lean = _lean_norm(setup)
    # an RMSNorm's output (the projections after it keep it), its float32 input and its float32 reciprocal RMS; lean:
    # the second norm keeps its input as it came instead (the residual sum; the first norm's is the layer's input)
    first_norm = a * h + 4 + (0 if lean else 4 * h)
    second_norm = a * h + 4 + (a * h if lean else 4 * h)
    attention_saved = first_norm + a * (3 * h + 2 * shape.kv_dim)  # + q, k, v and the attention output
    mlp_own = a * 4 * i  # gate, up, SiLU(gate), their product: what the tiled MLP divides
    mlp_transient = a * 2 * i  # gradients of gate and up during the MLP backward
    # the lean norm's backward temporaries are one chunk's, not the sequence's: estimate adds them once
    backward = 2 * a * h + (0 if lean else NORM_BACKWARD_COPIES * 4 * h)
    tiles = setup.tiles or 1
    if setup.checkpointing:
        return a * h, attention_saved + second_norm + (mlp_own + mlp_transient) / tiles + backward
    if setup.tiles:  # tiles keep only their input, recompute the rest
        return attention_saved + second_norm, (mlp_own + mlp_transient) / tiles + backward
    return attention_saved + second_norm + mlp_own, mlp_transient + backward


def _lean_norm(setup: Setup) -> bool:
    """Whether the lean RMSNorm changes what the norms keep: it is on, and the activations are below float32 (a float32
    run's norms make no copy)."""
    return setup.lean_norm and setup.param_bytes < 4


def _lean_norm_chunk(hidden: int, setup: Setup, tokens: float) -> int:
    """Bytes of the lean norm's backward temporaries: float32 copies of one chunk of rows (0 without the lean norm)."""
    return int(LEAN_NORM_CHUNK_COPIES * 4 * hidden * min(tokens, lean_norm.CHUNK_ROWS)) if _lean_norm(setup) else 0


def _norm_input(setup: Setup) -> int:
    """Bytes per hidden unit and token an RMSNorm keeps of its input: a float32 copy, or the input (lean)."""
    return setup.param_bytes if _lean_norm(setup) else 4


def _offloaded_layers(shape: ModelShape, setup: Setup) -> int:
    return offloaded_layers(setup.offload, shape.layers) if setup.checkpointing else 0


def _stored_bytes(setup: Setup) -> int:
    """Bytes per element of an offloaded input: fp8 or as computed."""
    return 1 if setup.offload_fp8 else setup.param_bytes


def pinned_block(nbytes: int) -> int:
    """``nbytes`` of pinned host memory as CUDA's caching host allocator takes it: the next power of two."""
    return 1 << (nbytes - 1).bit_length() if nbytes > 0 else 0


def step_flops(shape: ModelShape, tokens: int, seq_len: int, trainable_fraction: float = 1.0) -> float:
    """Model FLOPs of one forward+backward over ``tokens`` tokens in sequences of ``seq_len``.

    Dense: ``2 N T`` forward, ``2 N T`` for input gradients and ``2 N_trainable T`` for weight gradients
    (``6 N T`` for full fine-tuning), N counting the matmul parameters (layers and head, not the lookup table).
    Causal attention: ``2 * 2 * L_layers * H * seq_len * T / 2`` forward (QK^T and PV, half the matrix under the
    causal mask) and twice that backward. Recomputation by checkpointing is not counted (MFU counts useful work
    only).
    """
    matmul_params = shape.layers * shape.layer_params + shape.vocab * shape.hidden  # layers + head, no lookup
    dense = 2 * matmul_params * tokens * (2 + trainable_fraction)
    attention_forward = 2 * shape.layers * shape.heads * shape.head_size * seq_len * tokens
    return dense + 3 * attention_forward
