"""Section 6 of ``benchmarks/gpu_check.py``: flash-attn-4 against PyTorch's varlen FA2 on one attention layer of the
profile's shape, rows of one whole document, forward and backward, at each of the profile's ``kernel_lengths``:
``benchmarks/attention_kernels.py`` in a child process within the section's budget, one row per kernel and length as
it comes (TFLOP/s, median seconds, the first pass with any JIT compile, flash-attn-4's speed relative to varlen FA2).

On CUDA flash-attn-4 runs where its distribution is installed (``make wheelhouse-fa4``, its parts sent: see
docs/benchmarks.md), and is a skip saying so otherwise; on CPU the varlen path runs over the reference kernel
(``tests/varlen_reference.py``), so the section's code runs on every commit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchmarks.gpu_check_sections import Profile, Section
from benchmarks.harness import ROOT, child_env

FA2, FA4 = "varlen_fa2", "flash_attn_4"
REPEATS = 3
"""Timed passes per kernel and length, after one untimed."""


def _fa4_missing(profile: Profile) -> str | None:
    """Why flash-attn-4 cannot run here, None when it can be tried."""
    if profile.device != "cuda":
        return "flash-attn-4 needs a CUDA GPU (sm90 or newer)"
    try:
        version("flash-attn-4")
    except PackageNotFoundError:
        return "flash-attn-4 not installed (no .fa4-parts sent: make wheelhouse-fa4, docs/benchmarks.md)"
    return None


def _row(found: dict[str, Any], fa2: dict[int, float]) -> dict[str, Any]:
    """``attention_kernels``' row as the section reports it; flash-attn-4's TFLOP/s over varlen FA2's."""
    row = {"variant": found.pop("kernel"), "status": "error" if "error" in found else "ok", **found}
    if row["status"] == "ok" and row["variant"] == FA2:
        fa2[row["seq_len"]] = row["tflops"]
    if row["status"] == "ok" and row["variant"] == FA4 and row["seq_len"] in fa2:
        row["vs_varlen_fa2"] = row["tflops"] / fa2[row["seq_len"]]
    return row


def attention_kernels(section: Section, profile: Profile, scratch: Path) -> None:
    """Both kernels (flash-attn-4 where it can run) at each length, each row saved as it comes; what the budget
    cut off is a skip."""
    kernels = [FA2]
    missing = _fa4_missing(profile)
    if missing is None:
        kernels.append(FA4)
    else:
        section.skip(FA4, missing)
    if section.left() < profile.min_row_s:
        section.skip(", ".join(kernels), f"{max(section.left(), 0):.0f} s left of the total")
        return
    command = [sys.executable, "benchmarks/attention_kernels.py", "--shape", profile.shape, "--repeats", str(REPEATS),
               "--seq-len", *map(str, profile.kernel_lengths), "--kernels", *kernels]
    expected = {(kernel, seq_len) for seq_len in profile.kernel_lengths for kernel in kernels}
    fa2: dict[int, float] = {}
    stopped = threading.Event()
    with (scratch / "attention-kernels.log").open("w+") as log, \
            subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=log,
                             text=True) as child:

        def stop() -> None:
            stopped.set()
            child.kill()

        timer = threading.Timer(max(section.left(), 1), stop)
        timer.start()
        try:
            for line in child.stdout or ():
                if line.startswith("{"):
                    row = _row(json.loads(line), fa2)
                    expected.discard((row["variant"], row["seq_len"]))
                    section.add(row)
        except BaseException:  # this process is being stopped (``timeout``'s SIGTERM): the child too
            child.kill()
            raise
        finally:
            timer.cancel()
        code = child.wait()
        log.seek(0)
        error = log.read().strip()[-300:]
    if stopped.is_set():
        why = f"not measured within the section's {section.budget_s:.0f} s"
    else:
        why = f"attention_kernels.py ended (exit code {code}) without it"
        if code != 0:
            section.notes.append(f"attention_kernels.py: exit code {code}: {error}")
    for kernel, seq_len in sorted(expected, key=lambda key: (key[1], key[0])):
        section.skip(f"{kernel} at {seq_len:,}", why)
