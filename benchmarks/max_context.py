"""The longest context that trains within a memory budget: doubling, then bisection, within a time budget.

Each probe is one training step in a fresh process (benchmarks/harness.py) within --budget-s seconds. A length
fits when the step succeeds and its peak allocated memory is within --memory-gib (default: the GPU's memory on
CUDA; required on CPU, where nothing runs out of memory, only the resident set grows). A probe that times out
does not fit. When --total-budget-s runs out the search stops and reports the longest length that fitted so far
(``complete: false``). The toolkit configuration and the plain baseline are searched in the same run.

    python benchmarks/max_context.py --shape small --method full --memory-gib 0.25 --threads 1
    python benchmarks/max_context.py --shape llama3-8b --method lora --start 131072 --offload-from 0 --tiles 16
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import SHAPES, Config, for_length, measure
from toolkit.errors import command_parser, output_file, positive_float, positive_int
from toolkit.output_paths import write_text
from toolkit.plan.command import LOSS_CHUNK


class OutOfTime(Exception):
    """The search's total time budget ran out before the next probe."""


def longest_fitting(fits: Callable[[int], bool], start: int, granularity: int, limit: int) -> int:
    """The longest multiple of ``granularity`` for which ``fits`` holds (0 if ``start`` does not fit),
    assuming that fitting is monotone in the length: double from ``start`` up to ``limit``, then bisect."""
    if not fits(start):
        return 0
    good, bad = start, None
    while bad is None and good * 2 <= limit:
        if fits(good * 2):
            good *= 2
        else:
            bad = good * 2
    if bad is None:
        return good
    while bad - good > granularity:
        middle = (good + bad) // 2 // granularity * granularity
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good


def search(config: Config, budget_gib: float | None, start: int, granularity: int, limit: int,
           probe_s: float, deadline: float, offload_from: int | None = None, tiles_from: int | None = None,
           min_probe_s: float = 30) -> dict:
    """:func:`longest_fitting` over one-step probes of ``config``, each within ``probe_s`` seconds and all
    before ``deadline`` (``time.monotonic()``); a probe with less than ``min_probe_s`` left is not started."""
    probes: list[dict] = []

    def fits(seq_len: int) -> bool:
        left = deadline - time.monotonic()
        if left < min_probe_s:
            raise OutOfTime
        result = measure(replace(for_length(config, seq_len, offload_from, tiles_from), steps=1, warmup=0),
                         min(probe_s, left))
        probes.append(result)
        ok = result["status"] == "ok" and (budget_gib is None or result["peak_gib"] <= budget_gib)
        print(f"  {config.variant} {seq_len}: {result['status']} peak {result.get('peak_gib', float('nan')):.3f} GiB"
              f" -> {'fits' if ok else 'does not fit'}", flush=True)
        return ok

    try:
        longest, complete = longest_fitting(fits, start, granularity, limit), True
    except OutOfTime:
        fitted = [p["seq_len"] for p in probes
                  if p["status"] == "ok" and (budget_gib is None or p["peak_gib"] <= budget_gib)]
        longest, complete = max(fitted, default=0), False
    return {"variant": config.variant, "max_seq_len": longest, "complete": complete, "probes": probes}


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__, "benchmarks/max_context.py")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--method", choices=["lora", "full"], default="full")
    parser.add_argument("--memory-gib", type=positive_float, default=None)
    parser.add_argument("--start", type=positive_int, default=1024)
    parser.add_argument("--granularity", type=positive_int, default=1024)
    parser.add_argument("--limit", type=positive_int, default=16 * 1024 * 1024)
    parser.add_argument("--loss-chunk", type=positive_int, default=LOSS_CHUNK)
    parser.add_argument("--offload-from", type=int, default=None, help="offload activations from this length on")
    parser.add_argument("--tiles", type=positive_int, default=None)
    parser.add_argument("--tiles-from", type=int, default=0, help="tile the MLP from this length on")
    parser.add_argument("--budget-s", type=positive_float, default=600, help="seconds per probe")
    parser.add_argument("--total-budget-s", type=positive_float, default=3600, help="seconds per variant's search")
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--json", type=output_file)
    args = parser.parse_args(argv)
    if args.limit < args.start:
        parser.error(f"--limit: {args.limit} is below --start {args.start}")
    import torch

    if args.memory_gib is None and not torch.cuda.is_available():
        parser.error("--memory-gib is required on CPU")
    toolkit = Config(shape=args.shape, method=args.method, loss_chunk=args.loss_chunk, tiles=args.tiles,
                     threads=args.threads, peak_tflops=1.0)
    baseline = replace(toolkit, variant="baseline")
    results = [search(config, args.memory_gib, args.start, args.granularity, args.limit, args.budget_s,
                      time.monotonic() + args.total_budget_s, args.offload_from, args.tiles_from)
               for config in (toolkit, baseline)]
    for result in results:
        partial = "" if result["complete"] else " (time budget ran out; longest probed so far)"
        print(f"{result['variant']}: longest context within budget = {result['max_seq_len']:,} tokens{partial}")
    if args.json:
        write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
