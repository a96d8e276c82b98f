"""Tokens/s, MFU and peak memory of this toolkit's training step against a plain transformers baseline.

Both run in the same invocation, each in a fresh process, on the same random-weight model:
- toolkit:  chunked loss (--loss-chunk), checkpointing (--no-checkpointing to switch off), --offload, --tiles;
- baseline: transformers + peft + SDPA + gradient checkpointing, the model's own loss over full logits.

MFU = model FLOPs per second / peak. Model FLOPs per step (toolkit.plan_model.step_flops):
2 N T (2 + f) for the dense part, N = matmul parameters, T = tokens, f = trainable fraction (6 N T for full
fine-tuning), plus 6 * layers * hidden * seq_len * T for causal attention (forward + backward); recomputation
is not counted. The peak is --peak-tflops, or a dense matmul measured once on the device at the start.

    python benchmarks/train_throughput.py --shape tiny --method full --seq-len 1024 --threads 1
    python benchmarks/train_throughput.py --shape llama3-8b --method lora --seq-len 32768 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import SHAPES, Config, matmul_peak_tflops, measure  # noqa: E402

COLUMNS = ("variant", "seq_len", "status", "tokens_per_s", "mfu", "peak_gib", "step_s")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--seq-len", type=int, nargs="+", default=[1024])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--loss-chunk", type=int, default=4096)
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument("--offload", action="store_true")
    parser.add_argument("--tiles", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def format_row(result: dict) -> str:
    cells = []
    for column in COLUMNS:
        value = result.get(column, "")
        cells.append(f"{value:.3g}" if isinstance(value, float) else str(value))
    return " | ".join(cells)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    peak = args.peak_tflops or matmul_peak_tflops(args.threads)  # one denominator for every configuration
    print(f"MFU denominator: {peak:.3g} TFLOP/s ({'given' if args.peak_tflops else 'measured matmul peak'})")
    toolkit = Config(shape=args.shape, method=args.method, steps=args.steps, checkpointing=args.checkpointing,
                     offload=args.offload, loss_chunk=args.loss_chunk, tiles=args.tiles,
                     peak_tflops=peak, threads=args.threads)
    baseline = replace(toolkit, variant="baseline", checkpointing=True, offload=False, tiles=None)
    results = []
    print(" | ".join(COLUMNS))
    for seq_len in args.seq_len:
        for config in (toolkit, baseline):
            results.append(measure(replace(config, seq_len=seq_len)))
            print(format_row(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
