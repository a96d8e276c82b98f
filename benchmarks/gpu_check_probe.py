"""The plan against what ``benchmarks/gpu_check.py`` measures: section 4's toolkit rows, and section 5, the
longest-context probe.

At each of the profile's probe lengths, :mod:`benchmarks.context_probe` runs one step of a 1- and a 2-layer model
of the profile's shape (LoRA r=16 on attention, checkpointing, the first ``probe_offload`` layers' inputs in host
memory, tiled MLP, chunked loss) in a child process within what is left of the budget, and extrapolates GPU memory,
host memory and step time to the full depth. Each row puts the plan's figures for the full depth beside it
(:func:`toolkit.plan.memory.estimate`: allocated, i.e. without its allocator reserve and runtime overhead, and the
host's offloaded bytes), and a check holds the plan within 10% of the extrapolated allocated peak. A length that
the previous one's step time says will not finish is skipped with that estimate; its plan row still says what it
would take.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.context_probe import LEAN_NORM
from benchmarks.gpu_check_cli import cli_against_benchmark
from benchmarks.gpu_check_sections import Profile, Section, throughput
from benchmarks.harness import ROOT, SHAPES, child_env
from toolkit.plan.command import LORA, LOSS_CHUNK
from toolkit.plan.memory import GIB, Setup, estimate, shape_from_config

PLAN_TOLERANCE = 0.10
"""The plan's allocated peak against the probe's, relative."""
MEMORY_REPORTED_ONLY = ("reported, not asserted: the plan models GPU memory; on the CPU the peak is the resident set "
                        "the step added, mostly the allocator's at these tiny shapes")
"""Why the plan's checks only report where ``Profile.memory_asserted`` is false."""


def planned(shape_name: str, layers: int, seq_len: int, **settings: Any) -> dict[str, float]:
    """The plan's allocated GPU GiB, its total (what has to fit the card: with the allocator's reserve and the runtime
    overhead) and host GiB for one step of :data:`toolkit.plan.command.LORA` at ``seq_len`` on a ``layers``-layer model
    of the shape; ``settings``: :class:`toolkit.plan.memory.Setup` fields (bf16 and the lean norm, as recipes have
    it, unless they say otherwise)."""
    shape = shape_from_config({**SHAPES[shape_name], "num_hidden_layers": layers})
    setup = Setup(**{"param_bytes": 2, "attention": "flash/sdpa", "lean_norm": LEAN_NORM, **settings}, seq_len=seq_len,
                  lora_rank=LORA.r, lora_targets=tuple(LORA.target_modules))
    result = estimate(shape, setup)
    return {"plan_gib": result.allocated / GIB, "plan_total_gib": result.total / GIB,
            "plan_host_gib": result.host / GIB}


def throughput_against_plan(section: Section, profile: Profile, scratch: Path, peak_tflops: float) -> None:
    """Section 4 (:func:`benchmarks.gpu_check_sections.throughput`, with the CLI against the benchmark at the
    profile's ``cli_length``: :func:`benchmarks.gpu_check_cli.cli_against_benchmark`), then its toolkit rows against
    the plan: the measured peak allocated (CUDA; the CPU's is the resident set the step added, in float32) within
    10%."""
    throughput(section, profile, peak_tflops, partial(cli_against_benchmark, section, profile, scratch))
    for row in section.rows:
        if row.get("variant") != "toolkit" or row.get("status") != "ok" or row.get("method") != "lora":
            continue
        plan = planned(row["shape"], SHAPES[row["shape"]]["num_hidden_layers"], row["seq_len"],
                       param_bytes=2 if profile.device == "cuda" else 4, checkpointing=row["checkpointing"],
                       offload=row["offload"], loss_chunk=row["loss_chunk"], tiles=row["tiles"])
        row.update(plan)
        _against_plan(section, profile, f"plan vs toolkit at {row['seq_len']:,}: allocated GiB", plan["plan_gib"],
                      row["peak_gib"])


def _against_plan(section: Section, profile: Profile, what: str, plan_gib: float, measured_gib: float) -> None:
    section.check(what, abs(plan_gib / measured_gib - 1), PLAN_TOLERANCE,
                  "" if profile.memory_asserted else MEMORY_REPORTED_ONLY, profile.memory_asserted)


def _probe(section: Section, profile: Profile, seq_len: int, scratch: Path) -> dict[str, Any] | None:
    out = scratch / f"probe-{seq_len}.json"
    command = [sys.executable, "benchmarks/context_probe.py", "--device", profile.device, "--shape", profile.shape,
               "--seq-len", str(seq_len), "--layers-total", str(profile.probe_layers), "--offload",
               str(profile.probe_offload), "--tiles", str(profile.probe_tiles), "--json", str(out)]
    try:
        done = subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True,
                              timeout=max(section.left(), 1))
    except subprocess.TimeoutExpired:
        section.skip(f"probe at {seq_len:,}", f"did not finish within the {section.budget_s:.0f} s budget")
        return None
    if done.returncode != 0:
        section.skip(f"probe at {seq_len:,}", f"exit code {done.returncode}: {done.stderr.strip()[-300:]}")
        return None
    row: dict[str, Any] = json.loads(out.read_text())["rows"][0]
    return row


def _probe_plan(profile: Profile, layers: int, seq_len: int) -> dict[str, float]:
    """The plan of a ``layers``-layer probe step (the profile's placement, as far as the layers go)."""
    return planned(profile.shape, layers, seq_len, checkpointing=True, offload=min(profile.probe_offload, layers),
                   loss_chunk=LOSS_CHUNK, tiles=profile.probe_tiles)


def length_for_card(profile: Profile, seq_len: int) -> int | None:
    """``seq_len``, or the longest of its halves (down to an eighth) whose 2-layer probe step the plan fits in the
    card's memory, or None; ``seq_len`` where the profile knows no card memory (the CPU)."""
    for length in (seq_len, seq_len // 2, seq_len // 4, seq_len // 8):
        if profile.memory_gib is None or _probe_plan(profile, 2, length)["plan_total_gib"] <= profile.memory_gib:
            return length
    return None


def longest_context(section: Section, profile: Profile, scratch: Path) -> None:
    """Probe each length while the budget lasts (attention-bound: a length's step time from the previous one's,
    squared in the ratio); every length gets the plan's row. A length whose 2-layer step the plan says this card
    cannot hold is probed at the longest half that it can (an H100's 80 GB at 512K), once."""
    previous: dict[str, Any] | None = None
    tried: set[int] = set()
    for wanted in profile.probe_lengths:
        seq_len = length_for_card(profile, wanted)
        if seq_len != wanted:
            section.add({"seq_len": wanted, "status": "planned only", **_probe_plan(profile, profile.probe_layers,
                                                                                   wanted)})
            instead = "none down to an eighth" if seq_len is None else f"probed at {seq_len:,} instead"
            section.skip(f"probe at {wanted:,}", f"the plan's 2-layer step needs more than this card's "
                                                 f"{profile.memory_gib:.1f} GiB; {instead}")
        if seq_len is None or seq_len in tried:
            continue
        tried.add(seq_len)
        previous, failed = _probe_length(section, profile, seq_len, previous, scratch)
        if failed:
            break


def _probe_length(section: Section, profile: Profile, seq_len: int, previous: dict[str, Any] | None,
                  scratch: Path) -> tuple[dict[str, Any] | None, bool]:
    """One length's row (probed, or planned only where the budget will not last), against the plan; the row that
    times the next length (this one's if probed, else ``previous``), and whether the probe failed."""
    plan = _probe_plan(profile, profile.probe_layers, seq_len)
    measured_s = sum(step["step_s"] for step in previous["measured"]) if previous else None
    guess = None if measured_s is None else measured_s * (seq_len / previous["seq_len"]) ** 2  # type: ignore[index]
    if section.left() < (profile.min_row_s if guess is None else guess):
        why = f"about {guess:.0f} s by extrapolation, " if guess is not None else ""
        section.skip(f"probe at {seq_len:,}", f"{why}{max(section.left(), 0):.0f} s left")
        section.add({"seq_len": seq_len, "status": "planned only", **plan})
        return previous, False
    row = _probe(section, profile, seq_len, scratch)
    if row is None:
        section.add({"seq_len": seq_len, "status": "planned only", **plan})
        return previous, True
    section.add({**row, "status": "ok", **plan})
    _against_plan(section, profile, f"plan vs probe at {seq_len:,}, {profile.probe_layers} layers: allocated GiB",
                  plan["plan_gib"], row["device_gib"])
    return row, False
