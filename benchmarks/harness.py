"""One measured training configuration: build a random-weight Llama, run a few optimizer steps, report
tokens/s, MFU and peak memory. Every measurement runs in a fresh process (:func:`measure`), so peaks do not
leak between configurations and an out-of-memory failure is a result, not a crash.

Variants:
- ``toolkit``: ``toolkit.training.objective.CausalLMObjective`` (chunked loss) with the memory switches given
  (checkpointing, offload, tiled MLP) applied through ``toolkit.memory``.
- ``baseline``: plain transformers + peft + SDPA, ``model.gradient_checkpointing_enable()``, the model's own
  loss (``model(input_ids, labels=...)``, full logits).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the process's peak resident set
(``ru_maxrss``) minus the resident set before the model was built, i.e. what the model and training added.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=8192),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256),
}


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Config:
    """One configuration to measure."""

    shape: str = "tiny"
    method: str = "lora"
    seq_len: int = 1024
    variant: str = "toolkit"
    steps: int = 3
    checkpointing: bool = True
    offload: bool = False
    loss_chunk: int | None = 4096
    tiles: int | None = None
    peak_tflops: float | None = None
    threads: int | None = None
    """CPU threads (torch.set_num_threads); on a shared machine 1 avoids oversubscription stalls."""


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def matmul_peak_tflops(threads: int | None = None) -> float:
    """Measured dense matmul throughput of this machine's device in the benchmark's dtype (bf16 on CUDA,
    float32 on CPU): the MFU denominator unless one is given."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    repeats = 20 if device.type == "cuda" else 5
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run(config: Config) -> dict:
    """Measure ``config`` in this process (call through :func:`measure` for a clean one)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from toolkit.lora import CausalLM
    from toolkit.memory.checkpointing import enable_checkpointing
    from toolkit.memory.optimizers import build_optimizer
    from toolkit.memory.tiled_mlp import enable_tiled_mlp
    from toolkit.plan_model import shape_from_config, step_flops
    from toolkit.schema import TrainSpec
    from toolkit.training.objective import CausalLMObjective

    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rss_start = _rss_bytes()
    torch.manual_seed(0)
    llama = LlamaConfig(**{**SHAPES[config.shape], "max_position_embeddings": max(config.seq_len, 8192),
                           "attn_implementation": "sdpa", "use_cache": False})
    model: CausalLM
    with torch.device(device):
        # transformers wraps .to in functools.wraps(nn.Module.to), whose annotation hides the bound self from mypy
        model = LlamaForCausalLM(llama).to(dtype)  # type: ignore[arg-type]
    if config.method == "lora":
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=list(LORA_TARGETS)))
    model.train()
    if config.variant == "baseline":
        if config.checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        objective = None
    else:
        if config.checkpointing:
            enable_checkpointing(model, offload=config.offload)
        if config.tiles:
            enable_tiled_mlp(model, config.tiles)
        objective = CausalLMObjective(model, config.loss_chunk)
    trainable = [p for p in model.parameters() if p.requires_grad]
    train = TrainSpec(stages=[{"seq_len": config.seq_len, "max_steps": 1}])
    optimizer = build_optimizer(trainable, train, lr=1e-5)
    ids = torch.randint(0, llama.vocab_size, (1, config.seq_len), device=device)
    positions = torch.arange(config.seq_len, device=device)[None]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> float:
        if objective is None:
            loss = model(input_ids=ids, labels=ids).loss
        else:
            total, count = objective(input_ids=ids, position_ids=positions, labels=ids)
            loss = total / count
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    step()  # warm-up: optimizer state, kernels, allocator
    _sync(device)
    start = time.perf_counter()
    losses = [step() for _ in range(config.steps)]
    _sync(device)
    seconds = (time.perf_counter() - start) / config.steps
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_start)
    shape = shape_from_config(SHAPES[config.shape])
    total_params = sum(p.numel() for p in model.parameters())
    flops = step_flops(shape, config.seq_len, config.seq_len, sum(p.numel() for p in trainable) / total_params)
    peak_tflops = config.peak_tflops or matmul_peak_tflops()
    return {**asdict(config), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
            "load_average": os.getloadavg()[0],
            "tokens_per_s": config.seq_len / seconds, "step_s": seconds, "peak_gib": peak / 1024**3,
            "model_tflops": flops / seconds / 1e12, "peak_tflops": peak_tflops,
            "mfu": flops / seconds / 1e12 / peak_tflops, "loss": losses[-1], "status": "ok"}


def measure(config: Config, timeout: float = 1800) -> dict:
    """Run ``config`` in a fresh Python process; an out-of-memory or any failure comes back as a status."""
    command = [sys.executable, "-m", "benchmarks.harness", json.dumps(asdict(config))]
    # glibc serves allocations below its (growing) mmap threshold from the heap and keeps freed heap pages,
    # so the resident set would count fragmentation; a fixed 64 KiB threshold maps and unmaps every tensor.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "65536"}
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**asdict(config), "status": "timeout"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    out_of_memory = "out of memory" in done.stderr.lower() or done.returncode in (-9, 137)
    return {**asdict(config), "status": "oom" if out_of_memory else "error", "error": done.stderr[-600:]}


def main() -> None:
    print(json.dumps(run(Config(**json.loads(sys.argv[1])))))


if __name__ == "__main__":
    main()
