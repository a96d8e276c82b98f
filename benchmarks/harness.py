"""One measured training configuration: a random-weight Llama trained for a few optimizer steps on rows a user
trains on (``benchmarks/rows.py``: one document per row, or a heavy-tailed mixture packed by the toolkit), reporting
tokens/s over real (non-padding) and all tokens, the median and spread of the timed steps, MFU from the actual
document lengths and peak memory. Every measurement runs in a fresh process
(:func:`measure`) within a time budget, so peaks do not leak between configurations and an out-of-memory
failure or a timeout is a result, not a crash.

Variants (both start from the same random weights: ``toolkit.model.loading.build_random``, same seed):
- ``toolkit``: the toolkit's own loop, ``toolkit.training.loop.train_stage`` (``benchmarks/toolkit_variant.py``).
- ``baseline``: plain transformers + peft + SDPA + gradient checkpointing with the model's own loss
  (``benchmarks/baseline_variant.py``).

Peak memory: on CUDA ``max_memory_allocated`` and ``max_memory_reserved`` after the model is built; on CPU
the process's peak resident set (``ru_maxrss``) minus the resident set before the model was built (reserved:
none, there is no caching allocator).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks.rows import StepRow, step_rows
from toolkit.plan.command import LOSS_CHUNK
from toolkit.plan.memory import GIB, LLAMA3_8B

ROOT = Path(__file__).resolve().parents[1]


SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=8192),
    "8b-ratios": dict(hidden_size=512, intermediate_size=1792, num_hidden_layers=4, num_attention_heads=16,
                      num_key_value_heads=4, vocab_size=512),  # Llama-3-8B's proportions at an eighth of its width
    "llama3-8b": LLAMA3_8B.llama_config(),
}
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "65536"}
"""The environment every measurement runs in. glibc serves allocations below its (growing) mmap threshold from the
heap and keeps freed heap pages, so the resident set would count fragmentation; a fixed 64 KiB threshold maps and
unmaps every tensor (on CPU, at the cost of speed: the tiny shape's steps at 256 tokens take twice as long)."""
BF16_SPEC_TFLOPS = 989.0
"""H100/H200 SXM dense bf16 peak (spec sheet): the second MFU denominator on CUDA."""


@dataclass(frozen=True)
class Config:
    """One configuration to measure."""

    shape: str = "tiny"
    method: str = "lora"
    seq_len: int = 1024
    variant: str = "toolkit"
    steps: int = 3
    """Timed optimizer steps, after ``warmup`` untimed ones (optimizer state, kernels, allocator)."""
    rows: str = "one-document"
    """What each step trains on (``benchmarks.rows.ROWS``)."""
    warmup: int = 1
    checkpointing: bool = True
    offload: bool = False
    loss_chunk: int | None = LOSS_CHUNK
    tiles: int | None = None
    attention: str = "auto"
    """The toolkit's ``model.attention``; the baseline always runs sdpa."""
    peak_tflops: float | None = None
    threads: int | None = None
    """CPU threads (torch.set_num_threads); on a shared machine 1 avoids oversubscription stalls."""


@dataclass
class Trial:
    """What a variant hands back: the loss of every step and the seconds of the timed ones."""

    losses: list[float]
    step_s: list[float]
    trainable_fraction: float
    attention: str
    peak_gib: float | None = None
    """The most device memory any step took, where the variant's loop measures it per step (the toolkit's
    ``metrics.jsonl``, whose windows restart every row); None: read once after the trial."""


def for_length(config: Config, seq_len: int, offload_from: int | None, tiles_from: int | None) -> Config:
    """``config`` at ``seq_len``, with activation offload from ``offload_from`` tokens on and the tiled MLP
    (``config.tiles``) from ``tiles_from`` tokens on (None: never; the baseline never has either)."""
    toolkit = config.variant == "toolkit"
    return replace(config, seq_len=seq_len,
                   offload=toolkit and offload_from is not None and seq_len >= offload_from,
                   tiles=config.tiles if toolkit and tiles_from is not None and seq_len >= tiles_from else None)


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
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
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


def bench_rows(config: Config, extra: int = 0) -> list[StepRow]:
    """The rows of every step (warm-up first) that both variants train on, and ``extra`` rows after them; padded
    with the pad id of the benchmark recipe's tokenizer."""
    from benchmarks.toolkit_variant import bench_recipe
    from toolkit.data.tokenizer import load_tokenizer
    from toolkit.data.tokens import pad_id

    recipe = bench_recipe(config, Path("unused"))
    return step_rows(config.rows, config.seq_len, SHAPES[config.shape]["vocab_size"],
                     config.warmup + config.steps + extra, pad_id(load_tokenizer(recipe.model, recipe.seed)))


def _speeds(config: Config, trial: Trial, rows: list[StepRow], peak_tflops: float, on_gpu: bool) -> dict:
    """Tokens/s (real and all), step times (each, their median and spread) and MFU of the timed steps. Model FLOPs
    are counted per document (``step_flops`` of each document alone: attention from the sum of squared document
    lengths)."""
    from toolkit.plan.memory import shape_from_config, step_flops

    shape = shape_from_config(SHAPES[config.shape])
    timed = rows[config.warmup:]
    seconds = sum(trial.step_s)
    flops = sum(step_flops(shape, n, n, trial.trainable_fraction) for row in timed for n in row.lengths)
    real = sum(sum(row.lengths) for row in timed)
    model_tflops = flops / seconds / 1e12
    return {"tokens_per_s": config.seq_len * len(timed) / seconds, "real_tokens_per_s": real / seconds,
            "real_fraction": real / (config.seq_len * len(timed)), "step_s": median(trial.step_s),
            "step_s_min": min(trial.step_s), "step_s_max": max(trial.step_s), "step_times_s": trial.step_s,
            "model_tflops": model_tflops, "peak_tflops": peak_tflops, "mfu": model_tflops / peak_tflops,
            "mfu_spec": model_tflops / BF16_SPEC_TFLOPS if on_gpu else None,
            "documents": [row.lengths for row in timed]}


def run(config: Config) -> dict:
    """Measure ``config`` in this process (call through :func:`measure` for a clean one)."""
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rss_start = _rss_bytes()
    rows = bench_rows(config)
    variant: Callable[[Config, Callable[[], None], list[StepRow]], Trial]
    if config.variant == "baseline":
        from benchmarks.baseline_variant import run_baseline as variant
    else:
        from benchmarks.toolkit_variant import run_toolkit as variant
    trial = variant(config, torch.cuda.reset_peak_memory_stats if device.type == "cuda" else lambda: None, rows)
    if device.type == "cuda":
        peak, reserved = max(torch.cuda.max_memory_allocated(), (trial.peak_gib or 0) * GIB), \
            torch.cuda.max_memory_reserved()
    else:
        peak, reserved = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_start, None
    speeds = _speeds(config, trial, rows, config.peak_tflops or matmul_peak_tflops(), device.type == "cuda")
    return {**asdict(config), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "attention_used": trial.attention, "threads": torch.get_num_threads(),
            "load_average": os.getloadavg()[0], **speeds,
            "peak_gib": peak / GIB, "reserved_gib": None if reserved is None else reserved / GIB,
            "losses": trial.losses, "loss": trial.losses[-1], "status": "ok"}


def child_env(**extra: str) -> dict[str, str]:
    """A child process's environment: the checkout first on ``PYTHONPATH`` (the toolkit runs from it), unbuffered."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


def measure(config: Config, budget_s: float) -> dict:
    """Run ``config`` in a fresh Python process, stopped after ``budget_s`` seconds; an out-of-memory error, a
    timeout or any failure comes back as the row's status."""
    command = [sys.executable, "-m", "benchmarks.harness", json.dumps(asdict(config))]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, env=child_env(**FIXED_MMAP), capture_output=True, text=True,
                              timeout=max(budget_s, 1))
    except subprocess.TimeoutExpired:
        return {**asdict(config), "status": "timeout", "wall_s": time.monotonic() - started,
                "error": f"no result within its budget of {budget_s:.0f} s"}
    wall = time.monotonic() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        return {**json.loads(lines[-1]), "wall_s": wall}
    out_of_memory = "out of memory" in done.stderr.lower() or done.returncode in (-9, 137)
    return {**asdict(config), "status": "oom" if out_of_memory else "error", "wall_s": wall,
            "error": done.stderr[-600:]}


def main() -> None:
    print(json.dumps(run(Config(**json.loads(sys.argv[1])))))


if __name__ == "__main__":
    main()
