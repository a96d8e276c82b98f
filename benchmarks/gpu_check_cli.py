"""Section 4 of ``benchmarks/gpu_check.py``, the command line against the benchmark: ``python -m toolkit train`` in a
child process, as a user runs it, on the rows the benchmark's toolkit row trained on at the profile's ``cli_length``
(:mod:`benchmarks.cli_rows`: the same recipe, so the same shape, seed, random weights, LoRA, checkpointing, offload,
tiles, loss chunk, lr and steps), and its ``metrics.jsonl`` against that row. Check: the median real-token tokens/s
of the timed steps (after the warm-up) of each within 10%. The run has the benchmark's environment
(:data:`benchmarks.harness.FIXED_MMAP`, which halves the speed of tiny CPU steps) and is stopped once its last step is
logged: its checkpoint, final save (at the 8B shape, 16 GB of random base weights) and report are not compared. On the
CPU profile the ratio is reported, not asserted (``Profile.timing_asserted``): on 2 idle cores it was 0.95, on the
same cores shared with another job anything from 0.04 to 40, one tiny step taking 0.07 s in one run and 2.5 s in the
next (2026-12-04)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks.cli_rows import RUN, write_cli_recipe
from benchmarks.gpu_check_sections import Profile, Section
from benchmarks.gpu_check_training import Ended, stop
from benchmarks.harness import FIXED_MMAP, ROOT, Config, child_env
from toolkit.run_folder import read_metrics, read_run_info

CLI_TOLERANCE = 0.10
"""The CLI's median real tokens/s against the benchmark's, relative."""
REPORTED_ONLY = ("reported, not asserted: on shared CPU cores one tiny step takes 0.07 s in one run and 2.5 s in the "
                 "next")
"""Why the check only reports its ratio where ``Profile.timing_asserted`` is false."""


def benchmark_median(row: dict[str, Any]) -> float:
    """A benchmark row's median over its timed steps of real tokens per second."""
    real = [sum(lengths) for lengths in row["documents"]]
    return median(n / seconds for n, seconds in zip(real, row["step_times_s"], strict=True))


def _train(section: Section, recipe: Path, steps: int, log: Path) -> tuple[list[dict[str, Any]], Ended]:
    """``python -m toolkit train recipe`` until its ``steps``-th step is logged (then stopped), it ends, or the
    section's time runs out; its ``metrics.jsonl`` records and how it ended (code None: stopped)."""
    run = recipe.parent / RUN
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "toolkit", "train", str(recipe)], cwd=ROOT,
                                env=child_env(**FIXED_MMAP), stdout=out, stderr=subprocess.STDOUT)
    try:
        while len(read_metrics(run)) < steps and proc.poll() is None and section.left() > 0:
            time.sleep(0.2)
    finally:
        code = proc.poll()
        stop(proc)
    return read_metrics(run), Ended(code, log.read_text(errors="replace"), time.monotonic() - started)


def _row(config: Config, timed: list[dict[str, Any]], run: Path, wall_s: float) -> dict[str, Any]:
    """The CLI's row of section 4, its speeds counted as the harness counts the benchmark's."""
    seconds = [config.seq_len / r["tokens_per_s"] for r in timed]
    real = sum(r["real_tokens_per_s"] * s for r, s in zip(timed, seconds, strict=True))
    info = read_run_info(run)
    return {"variant": "CLI (metrics.jsonl)", "rows": config.rows, "seq_len": config.seq_len, "status": "ok",
            "attention_used": info.attention, "offload": config.offload, "tiles": config.tiles,
            "real_tokens_per_s": real / sum(seconds), "tokens_per_s": config.seq_len * len(timed) / sum(seconds),
            "step_s": median(seconds), "step_s_min": min(seconds), "step_s_max": max(seconds), "wall_s": wall_s}


def cli_against_benchmark(section: Section, profile: Profile, scratch: Path, config: Config,
                          row: dict[str, Any] | None) -> None:
    """Train ``config``'s rows through the CLI and check its figure against ``row``, the toolkit row of ``config``
    (None: not measured); skipped when there is no such row or too little time for one like it."""
    what = f"CLI at {config.seq_len:,}"
    if row is None or row.get("status") != "ok":
        status = "skipped" if row is None else row.get("status")
        section.skip(what, f"the benchmark's toolkit row at {config.seq_len:,} is {status}: nothing to compare with")
        return
    if section.left() < row["wall_s"]:
        section.skip(what, f"about {row['wall_s']:.0f} s (the toolkit row's wall time), {max(section.left(), 0):.0f} "
                           "s left of the section's budget")
        return
    folder = scratch / f"cli-{config.seq_len}"
    steps = config.warmup + config.steps
    records, ended = _train(section, write_cli_recipe(config, folder), steps, folder / "train.log")
    check = f"CLI metrics.jsonl vs benchmark, same rows ({config.rows} at {config.seq_len:,}): within 10%"
    note = "" if profile.timing_asserted else REPORTED_ONLY
    if len(records) < steps:
        why = f"{len(records)} of {steps} steps logged ({ended.reason()})"
        section.check(check, None, CLI_TOLERANCE, f"{why}; {note}" if note else why, profile.timing_asserted)
        return
    timed = records[config.warmup:steps]
    section.add({**_row(config, timed, folder / RUN, ended.wall_s), "losses": [r["loss"] for r in records]})
    cli, benchmark = median(r["real_tokens_per_s"] for r in timed), benchmark_median(row)
    section.check(f"{check}: median real tokens/s {cli:,.0f} (CLI) vs {benchmark:,.0f} (benchmark), ratio "
                  f"{cli / benchmark:.3f}", abs(cli / benchmark - 1), CLI_TOLERANCE, note, profile.timing_asserted)
