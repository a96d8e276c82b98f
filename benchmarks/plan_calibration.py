"""Calibrate the memory plan: measured peak of real training steps against toolkit.plan.memory's estimate.

Runs a random Llama through the toolkit's training step (benchmarks/harness.py, fresh process each) under
several memory settings and compares the measured peak (CPU: resident memory the model and training added,
float32; CUDA: max_memory_allocated, bf16) with the plan's total minus its CUDA runtime overhead and allocator
reserve.

    python benchmarks/plan_calibration.py --shape small --seq-len 4096 --threads 1
    python benchmarks/plan_calibration.py --shape llama3-8b --method lora --seq-len 16384
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.context_probe import LEAN_NORM
from benchmarks.harness import SHAPES, Config, measure
from toolkit.errors import command_parser, output_file, positive_float, positive_int
from toolkit.output_paths import write_text
from toolkit.plan.command import LORA
from toolkit.plan.memory import GIB, Setup, estimate, shape_from_config

SETTINGS = [  # (label, checkpointing, loss chunk, tiles)
    ("no checkpointing, plain loss", False, None, None),
    ("checkpointing, plain loss", True, None, None),
    ("checkpointing, chunked loss 1024", True, 1024, None),
    ("checkpointing, chunked loss, tiled MLP x4", True, 1024, 4),
]


def calibrate(shape_name: str, method: str, seq_len: int, threads: int | None, budget_s: float) -> list[dict]:
    import torch

    shape = shape_from_config(SHAPES[shape_name])
    lora: dict[str, Any] = dict(lora_rank=LORA.r, lora_targets=tuple(LORA.target_modules)) if method == "lora" else {}
    rows = []
    for label, checkpointing, chunk, tiles in SETTINGS:
        config = Config(shape=shape_name, method=method, seq_len=seq_len, steps=1, checkpointing=checkpointing,
                        loss_chunk=chunk, tiles=tiles, threads=threads, peak_tflops=1.0)
        measured = measure(config, budget_s)
        setup = Setup(seq_len=seq_len, param_bytes=2 if torch.cuda.is_available() else 4,
                      checkpointing=checkpointing, loss_chunk=chunk, tiles=tiles, lean_norm=LEAN_NORM, **lora)
        planned = estimate(shape, setup).allocated / GIB  # what is measured
        rows.append({"setting": label, "measured_gib": measured.get("peak_gib"), "planned_gib": planned,
                     "error": planned / measured["peak_gib"] - 1 if measured["status"] == "ok" else None})
        error = "n/a" if rows[-1]["error"] is None else f"{rows[-1]['error']:+.0%}"
        print(f"{label:45s} {measured['status']:5s} measured {measured.get('peak_gib', float('nan')):.3f} GiB  "
              f"planned {planned:.3f} GiB  error {error}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__, "benchmarks/plan_calibration.py")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--method", choices=["lora", "full"], default="full")
    parser.add_argument("--seq-len", type=positive_int, default=4096)
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--budget-s", type=positive_float, default=600, help="seconds per setting")
    parser.add_argument("--json", type=output_file)
    args = parser.parse_args(argv)
    rows = calibrate(args.shape, args.method, args.seq_len, args.threads, args.budget_s)
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
