"""The longest-context probe: one training step of a 1- and a 2-layer Llama at given lengths, measured, then
extrapolated to the full depth.

Each length runs a model of one layer and one of two layers (the 8B per-layer shapes on a GPU, or any shape of
``benchmarks.harness.SHAPES``), LoRA r=16 on q/k/v/o, gradient checkpointing, the recipe's offload placement
(first N layers, fp8 or not), tiled MLP and chunked loss, on one row of random ids. Per model it measures the
device bytes (CUDA: peak allocated and reserved; CPU: the peak of live tensor bytes created during the step, from
:class:`LiveBytes`), the host bytes of offloaded inputs (:class:`toolkit.memory.offload.OffloadStore`) and the step
time. The two-minus-one difference is one layer's cost; the full depth is the two-layer figure plus that per
extra layer (the offloaded layers' cost in host bytes, the others' in device bytes).

    python benchmarks/context_probe.py --seq-len 131072 262144 524288 --offload 32 --tiles 16
    python benchmarks/context_probe.py --device cpu --shape tiny --seq-len 512 1024 --layers-total 32
"""

from __future__ import annotations

import gc
import json
import sys
import time
import weakref
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import SHAPES
from toolkit.errors import command_parser, output_file, positive_int
from toolkit.formatting.blocks import markdown_table
from toolkit.memory.chunked_loss import causal_lm_loss
from toolkit.memory.features import enable_memory_features
from toolkit.memory.offload import OffloadStore
from toolkit.model.loading import build_on_meta, materialise
from toolkit.model.lora import apply_lora
from toolkit.output_paths import write_text
from toolkit.plan.command import LORA, LOSS_CHUNK
from toolkit.plan.memory import GIB
from toolkit.recipe.schema import StageSpec, TrainSpec
from toolkit.training.objective import causal_lm_parts

LEAN_NORM: bool = TrainSpec.model_fields["lean_rmsnorm"].default
"""Whether a recipe's RMSNorms are the lean ones unless it says otherwise."""


class LiveBytes(TorchDispatchMode):
    """The bytes of tensor storage created under this mode and still alive (``live``), and the most at once
    (``peak``): on CPU, what a device's allocator would report as allocated."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta":
                self._track(leaf.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        if storage in self._seen:
            return
        self._seen[storage] = True
        self._add(storage.nbytes())
        weakref.finalize(storage, self._add, -storage.nbytes())

    def _add(self, nbytes: int) -> None:
        self.live += nbytes
        self.peak = max(self.peak, self.live)


@dataclass(frozen=True)
class Probe:
    """One configuration: ``offload`` layers of the full depth keep their input in host memory."""

    shape: str = "llama3-8b"
    seq_len: int = 4096
    layers_total: int = 32
    offload: int = 0
    fp8: bool = False
    tiles: int | None = None
    loss_chunk: int = LOSS_CHUNK
    device: str = "cuda"
    bf16: bool = True
    """bf16 weights under bf16 autocast (on CPU too, to see the GPU's tensors); else float32."""
    vocab: int | None = None
    """A smaller vocabulary than the shape's (the logits do not depend on the depth; CPU probes of 8B widths)."""
    lean_norm: bool = LEAN_NORM
    """The RMSNorms as ``train.lean_rmsnorm`` makes them (the recipes' default); else transformers' own."""

    @property
    def sizes(self) -> dict[str, Any]:
        return {**SHAPES[self.shape], **({"vocab_size": self.vocab} if self.vocab else {})}

    def train_spec(self, layers: int) -> TrainSpec:
        """The ``train`` block of a recipe that steps a ``layers``-layer model as this probe does: checkpointing, its
        layers offloaded as the first ones of the full depth are, tiles, chunked loss and norms."""
        offloaded = min(layers, self.offload)
        return TrainSpec(stages=[StageSpec(seq_len=self.seq_len, max_steps=1)], gradient_checkpointing=True,
                         activation_offload=offloaded or False,
                         activation_offload_dtype="fp8" if self.fp8 and offloaded else "native",
                         loss_chunk_size=self.loss_chunk, tiled_mlp=self.tiles or None, lean_rmsnorm=self.lean_norm)


def _model(probe: Probe, layers: int, train: TrainSpec) -> tuple[PeftModel, OffloadStore | None]:
    """A random ``layers``-layer model of the probe's shape with LoRA and the memory features ``train`` switches on,
    and the store of its offloaded inputs."""
    from transformers import LlamaConfig

    device = torch.device(probe.device)
    dtype = torch.bfloat16 if probe.bf16 else torch.float32
    config = LlamaConfig(**{**probe.sizes, "num_hidden_layers": layers,
                            "max_position_embeddings": probe.seq_len})
    base = materialise(build_on_meta(config, "sdpa", dtype), device, seed=0)
    model = apply_lora(base, LORA)
    store = enable_memory_features(model, train)
    return model.train(), store


def measure_step(probe: Probe, layers: int) -> dict[str, Any]:
    """One forward and backward of a ``layers``-layer model: device bytes, host bytes of offload, seconds."""
    if probe.device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()  # the previous model's cached blocks would count as this one's reserve
    train = probe.train_spec(layers)
    model, store = _model(probe, layers, train)
    device = torch.device(probe.device)
    ids = torch.randint(0, probe.sizes["vocab_size"], (1, probe.seq_len),
                        generator=torch.Generator().manual_seed(0)).to(device)
    decoder, head = causal_lm_parts(model)
    tracker = LiveBytes()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=probe.bf16), \
            (tracker if device.type == "cpu" else nullcontext()):
        hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
        loss, count = causal_lm_loss(hidden, head, ids, probe.loss_chunk)
        (loss / count).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    cuda = device.type == "cuda"
    return {"layers": layers, "step_s": seconds,
            "device_bytes": torch.cuda.max_memory_allocated() if cuda else tracker.peak,
            "reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
            "host_bytes": store.peak_host_bytes if store else 0, "loss": (loss / count).item()}


def extrapolate(one: dict[str, Any], two: dict[str, Any], probe: Probe) -> dict[str, Any]:
    """The full depth from a one- and a two-layer step: the second layer's cost, once per further layer."""
    extra = probe.layers_total - 2
    offloaded_extra = max(0, min(probe.offload, probe.layers_total) - 2)
    per_layer = {key: (two[key] or 0) - (one[key] or 0) for key in ("device_bytes", "reserved_bytes", "host_bytes",
                                                                    "step_s")}
    # a layer past the second costs what the second did; when both probe layers were offloaded, a further layer
    # that is not keeps its input (seq_len x hidden) on the device
    on_device = per_layer["device_bytes"] if probe.offload < 2 else _input_bytes(probe)
    return {"seq_len": probe.seq_len, "per_layer_device_gib": per_layer["device_bytes"] / GIB,
            "per_layer_host_gib": per_layer["host_bytes"] / GIB, "per_layer_s": per_layer["step_s"],
            "device_gib": (two["device_bytes"] + (extra - offloaded_extra) * on_device) / GIB,
            "reserved_gib": None if two["reserved_bytes"] is None else
            (two["reserved_bytes"] + (extra - offloaded_extra) * on_device) / GIB,
            "host_gib": (two["host_bytes"] + offloaded_extra * per_layer["host_bytes"]) / GIB,
            "step_s": two["step_s"] + extra * per_layer["step_s"], "loss": two["loss"]}


def _input_bytes(probe: Probe) -> int:
    """One layer's input in the probe's compute dtype."""
    return probe.seq_len * probe.sizes["hidden_size"] * (2 if probe.bf16 else 4)


def probe_lengths(base: Probe, lengths: list[int]) -> list[dict[str, Any]]:
    """Measure every length (one and two layers each) and extrapolate; rows as :func:`extrapolate` gives them."""
    rows = []
    for seq_len in lengths:
        probe = Probe(**{**asdict(base), "seq_len": seq_len})
        one, two = measure_step(probe, 1), measure_step(probe, 2)
        rows.append({**extrapolate(one, two, probe), "measured": [one, two]})
    return rows


def table(rows: list[dict[str, Any]], probe: Probe) -> str:
    """The rows as a Markdown table, at the probe's full depth."""
    header = ["seq_len", "per layer device GiB", "per layer host GiB", "per layer s",
              f"{probe.layers_total} layers: device GiB", "reserved GiB", "host GiB", "step s"]
    cells = [[f"{row['seq_len']:,}", f"{row['per_layer_device_gib']:.3f}", f"{row['per_layer_host_gib']:.3f}",
              f"{row['per_layer_s']:.2f}", f"{row['device_gib']:.2f}",
              "-" if row["reserved_gib"] is None else f"{row['reserved_gib']:.2f}", f"{row['host_gib']:.2f}",
              f"{row['step_s']:.1f}"] for row in rows]
    return markdown_table(header, cells)


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__, "benchmarks/context_probe.py")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    parser.add_argument("--seq-len", type=positive_int, nargs="+", default=[131072, 262144, 524288])
    parser.add_argument("--layers-total", type=positive_int, default=32)
    parser.add_argument("--offload", type=int, default=32, help="layers of the full depth offloaded (first ones)")
    parser.add_argument("--fp8", action="store_true", help="offloaded inputs stored as fp8")
    parser.add_argument("--tiles", type=int, default=16, help="MLP tiles (0: none)")
    parser.add_argument("--loss-chunk", type=positive_int, default=LOSS_CHUNK)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fp32", action="store_true", help="float32 weights and compute instead of bf16")
    parser.add_argument("--vocab", type=positive_int, help="a smaller vocabulary than the shape's")
    parser.add_argument("--transformers-norm", action="store_true",
                        help="transformers' RMSNorm (float32 copies) instead of the lean one recipes use")
    parser.add_argument("--json", type=output_file)
    args = parser.parse_args(argv)
    probe = Probe(shape=args.shape, layers_total=args.layers_total, offload=args.offload, fp8=args.fp8,
                  tiles=args.tiles, loss_chunk=args.loss_chunk, device=args.device, bf16=not args.fp32,
                  vocab=args.vocab, lean_norm=not args.transformers_norm)
    rows = probe_lengths(probe, args.seq_len)
    print(table(rows, probe))
    if args.json:
        write_text(args.json, json.dumps({"probe": asdict(probe), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
