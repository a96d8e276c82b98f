"""Tokens/s, MFU and peak memory (allocated and reserved) of this toolkit's training loop against a plain
transformers baseline.

Both run in the same invocation, each in a fresh process within --budget-s seconds, on the same random-weight
model and the same documents (benchmarks/rows.py, --rows: one document per row, and a heavy-tailed mixture packed
by the toolkit; the baseline trains each document on its own, unpacked):
- toolkit:  ``train_stage`` with chunked loss (--loss-chunk), checkpointing (--no-checkpointing to switch off),
  activation offload from --offload-from tokens on, the MLP in --tiles tiles from --tiles-from tokens on;
- baseline: transformers + peft + SDPA + gradient checkpointing, the model's own loss over full logits.

Speeds: tokens/s over real (non-padding) tokens and over all tokens of the rows; the median, fastest and slowest
of the --steps timed steps after one warm-up. MFU = model FLOPs per second / peak. Model FLOPs per step
(toolkit.plan.memory.step_flops, summed over the step's documents): 2 N T (2 + f) for the dense part, N = matmul
parameters, T = real tokens, f = trainable fraction (6 N T for full fine-tuning), plus 6 * layers * hidden * sum of
squared document lengths for causal attention (forward + backward); recomputation is not counted. Peaks: a dense
matmul measured once on the device at the start (or --peak-tflops) for ``mfu``, and on CUDA the 989 TFLOP/s bf16
spec for ``mfu_spec``.

    python benchmarks/train_throughput.py --shape tiny --method full --seq-len 1024 --threads 1
    python benchmarks/train_throughput.py --shape llama3-8b --method lora --seq-len 8192 32768 131072 \
        --offload-from 131072 --tiles 8 --tiles-from 65536 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import SHAPES, Config, for_length, matmul_peak_tflops, measure
from benchmarks.rows import ROWS
from toolkit.errors import command_parser, output_file, positive_float, positive_int
from toolkit.output_paths import write_text
from toolkit.plan.command import LOSS_CHUNK

COLUMNS = ("variant", "rows", "seq_len", "status", "real_tokens_per_s", "tokens_per_s", "mfu", "mfu_spec", "peak_gib",
           "reserved_gib", "step_s", "step_s_min", "step_s_max")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser(__doc__, "benchmarks/train_throughput.py")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--seq-len", type=positive_int, nargs="+", default=[1024])
    parser.add_argument("--steps", type=positive_int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--rows", choices=ROWS, nargs="+", default=list(ROWS), help="what each step trains on")
    parser.add_argument("--loss-chunk", type=positive_int, default=LOSS_CHUNK)
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument("--offload-from", type=int, default=None, help="offload activations from this length on")
    parser.add_argument("--tiles", type=positive_int, default=None)
    parser.add_argument("--tiles-from", type=int, default=0, help="tile the MLP from this length on")
    parser.add_argument("--attention", default="auto", help="the toolkit's model.attention")
    parser.add_argument("--budget-s", type=positive_float, default=600, help="seconds per configuration")
    parser.add_argument("--peak-tflops", type=positive_float, default=None)
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--json", type=output_file, help="also write the results here")
    return parser.parse_args(argv)


def format_row(result: dict) -> str:
    cells = []
    for column in COLUMNS:
        value = result.get(column)
        value = "-" if value is None else value
        cells.append(f"{value:.3g}" if isinstance(value, float) else str(value))
    return " | ".join(cells)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    peak = args.peak_tflops or matmul_peak_tflops(args.threads)  # one denominator for every configuration
    print(f"MFU denominator: {peak:.3g} TFLOP/s ({'given' if args.peak_tflops else 'measured matmul peak'})")
    toolkit = Config(shape=args.shape, method=args.method, steps=args.steps, checkpointing=args.checkpointing,
                     loss_chunk=args.loss_chunk, tiles=args.tiles, attention=args.attention, peak_tflops=peak,
                     threads=args.threads)
    baseline = replace(toolkit, variant="baseline", checkpointing=True)
    results = []
    print(" | ".join(COLUMNS))
    for rows in args.rows:
        for seq_len in args.seq_len:
            for config in (replace(toolkit, rows=rows), replace(baseline, rows=rows)):
                results.append(measure(for_length(config, seq_len, args.offload_from, args.tiles_from), args.budget_s))
                print(format_row(results[-1]), flush=True)
    if args.json:
        write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
