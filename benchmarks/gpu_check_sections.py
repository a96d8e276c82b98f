"""What the sections of ``benchmarks/gpu_check.py`` share (the device :class:`Profile`, each :class:`Section`'s
budget, rows, checks and skips), sections 1 and 4, and the device's facts. Each section runs its work in
subprocesses that never outlive its budget, and calls ``section.save()`` after every row or check so that an
interrupted check still leaves what it measured. Sections 2 and 3 (training comparisons) are in
``benchmarks/gpu_check_training.py`` and ``benchmarks/gpu_check_engines.py``, section 4's CLI check in
``benchmarks/gpu_check_cli.py``, section 5 (the longest-context probe) in ``benchmarks/gpu_check_probe.py``, section 6
(flash-attn-4 against varlen FA2) in ``benchmarks/gpu_check_kernels.py``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, Config, child_env, for_length, measure


@dataclass(frozen=True)
class Profile:
    """What the check runs on one kind of device."""

    device: str
    shape: str
    lengths: tuple[int, ...]
    """Section 4: toolkit and baseline at each length."""
    cli_length: int
    """Section 4: the length (one of ``lengths``) at which the CLI trains the toolkit row's rows
    (``benchmarks/gpu_check_cli.py``)."""
    timing_asserted: bool
    """Whether the CLI's speed against the benchmark's is a pass/fail check, or only reported."""
    memory_asserted: bool
    """Whether the plan's memory against the measured peak is a pass/fail check, or only reported
    (:data:`benchmarks.gpu_check_probe.MEMORY_REPORTED_ONLY`)."""
    offload_from: int
    tiles: int
    tiles_from: int
    stage_overrides: tuple[str, ...]
    """Sections 2 and 3: overrides of the tiny recipe's first stage, applied where its starting weights are built."""
    compared_steps: int
    """Section 2: the steps compared, device against CPU (``benchmarks/gpu_check_training.py``)."""
    engine_steps: int
    """Section 3: the steps compared, each engine against one plain process (``benchmarks/gpu_check_engines.py``)."""
    engines: tuple[tuple[str, str | None, tuple[str, ...]], ...]
    """Section 3: each engine's name, launch config (from the repository root; None: it needs a GPU) and extra
    ``accelerate launch`` options."""
    probe_lengths: tuple[int, ...]
    """Section 5: the longest-context probe's lengths (benchmarks/gpu_check_probe.py)."""
    probe_layers: int
    """The full depth the probe extrapolates to."""
    probe_offload: int
    """Layers of the full depth whose checkpointed inputs the probe keeps in host memory."""
    probe_tiles: int
    """The probe's MLP tiles."""
    kernel_lengths: tuple[int, ...]
    """Section 6: flash-attn-4 and varlen FA2 over one layer at each length (benchmarks/gpu_check_kernels.py)."""
    budgets: tuple[float, float, float, float]
    """Seconds for sections 1-4; section 5 gets what is left of the total but section 6's ``kernels_s``."""
    kernels_s: float
    """Section 6's seconds, held back from section 5's remainder."""
    total_s: float
    min_row_s: float
    """A measurement whose time cannot be extrapolated yet starts only with this many seconds left."""
    memory_gib: float | None = None
    """The device's memory, as read at the start (None: the CPU, where section 5 does not size its lengths by it)."""


@dataclass
class Section:
    name: str
    budget_s: float
    save: Callable[[], None]
    started: float = field(default_factory=time.monotonic)
    elapsed_s: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    """Pass or fail (or only reported): a measured difference against its tolerance."""
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.save()

    def check(self, what: str, difference: float | None, tolerance: float, why: str = "",
              asserted: bool = True) -> None:
        """Passes when ``difference`` (None: not measured, ``why`` says why) is at most ``tolerance``; not
        ``asserted``: the result is "reported" whatever the difference."""
        passed = difference is not None and difference <= tolerance  # NaN fails too
        result = ("pass" if passed else "fail") if asserted else "reported"
        self.checks.append({"what": what, "difference": difference, "tolerance": tolerance, "result": result,
                            "why": why})
        self.save()

    def skip(self, what: str, why: str) -> None:
        self.skipped.append({"what": what, "why": why})
        self.save()


# 1. pytest -m gpu

_GPU_MARKS = ("pytest.mark.gpu", "tests.devices")
"""What a test file with gpu-marked tests names: the mark, or the device list whose CUDA entry carries it."""


_VERBOSE_LINE = re.compile(r"^(?P<path>tests/\S+)\.py::(?P<name>\S+) "
                           r"(?P<outcome>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
"""A test's line in ``pytest -v`` output, written when the test ends (the junit report comes only at the end)."""
_JUNIT_OUTCOMES = {"PASSED": "passed", "FAILED": "failure", "ERROR": "error", "SKIPPED": "skipped", "XFAIL": "skipped",
                   "XPASS": "passed"}
"""``pytest -v``'s word for an outcome -> the junit report's, which the section's rows use."""


def finished_tests(output: str | bytes | None) -> list[dict[str, Any]]:
    """The tests that ``pytest -v`` said had ended, as rows named like the junit report's (``tests.module::name``):
    what a run stopped at its budget still tells."""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output or ""
    return [{"test": f"{m['path'].replace('/', '.')}::{m['name']}", "outcome": _JUNIT_OUTCOMES[m["outcome"]],
             "seconds": None,
             "message": "ended before the section's budget ran out (pytest was stopped before its report)"}
            for m in map(_VERBOSE_LINE.match, text.splitlines()) if m]


def gpu_tests(section: Section, profile: Profile, scratch: Path) -> None:
    """``pytest -m gpu`` over the test files that hold gpu-marked tests; one row per test (stopped at its budget:
    one per test that had ended)."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if any(mark in p.read_text() for mark in _GPU_MARKS))
    report = scratch / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-v", "-m", "gpu", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={report}", *files]
    try:
        done = subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True,
                              timeout=section.left())
    except subprocess.TimeoutExpired as stopped:
        ended = finished_tests(stopped.stdout)
        for row in ended:
            section.add(row)
        section.skip("pytest -m gpu", f"did not finish within {section.budget_s:.0f} s ({len(ended)} tests ended)")
        return
    section.notes.append(f"exit code {done.returncode}: {(done.stdout.strip().splitlines() or [''])[-1]}")
    if not report.exists():
        section.skip("pytest -m gpu", f"no report: {done.stderr[-300:]}")
        return
    parse_report(section, report)


def parse_report(section: Section, report: Path) -> None:
    """A row per test case of pytest's junit ``report``: its outcome, seconds and first line of message."""
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome, message = kind, ((found.get("message") or "").splitlines() or [""])[0][:200]
        section.add({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                     "seconds": float(case.get("time") or 0), "message": message})


# 4. toolkit vs baseline at the profile's lengths

def _estimate_s(previous: dict[str, Any] | None, seq_len: int, steps: int) -> float | None:
    """Seconds a run at ``seq_len`` should take, from the last measured row (attention-bound: quadratic)."""
    if previous is None or previous.get("status") != "ok":
        return None
    overhead = previous["wall_s"] - previous["step_s"] * (previous["warmup"] + previous["steps"])
    return overhead + previous["step_s"] * (seq_len / previous["seq_len"]) ** 2 * steps


def _run_or_skip(section: Section, config: Config, previous: dict[str, Any] | None,
                 min_row_s: float) -> dict[str, Any] | None:
    what = f"{config.variant} at {config.seq_len:,}"
    estimate = _estimate_s(previous, config.seq_len, config.warmup + config.steps)
    if section.left() < (min_row_s if estimate is None else estimate):
        guess = f"about {estimate:.0f} s by extrapolation, " if estimate is not None else ""
        section.skip(what, f"{guess}{max(section.left(), 0):.0f} s left of the section's budget")
        return None
    row = measure(config, section.left())
    section.add(row)
    return row


def throughput(section: Section, profile: Profile, peak_tflops: float,
               at_cli_length: Callable[[Config, dict[str, Any] | None], None]) -> None:
    """Toolkit (offload and tiles per length) and baseline at each length, LoRA r=16 on attention; the
    baseline is not run past its first out-of-memory length (that length's row is its result). After the rows at
    ``profile.cli_length``: ``at_cli_length`` with the toolkit's configuration and row there (None: not run)."""
    common = Config(shape=profile.shape, method="lora", steps=3, warmup=1, tiles=profile.tiles,
                    peak_tflops=peak_tflops)
    last: dict[str, dict[str, Any] | None] = {"toolkit": None, "baseline": None}
    failed: dict[str, int] = {}
    for seq_len in profile.lengths:
        configs = {variant: for_length(replace(common, variant=variant), seq_len, profile.offload_from,
                                       profile.tiles_from) for variant in ("toolkit", "baseline")}
        rows: dict[str, dict[str, Any] | None] = {}
        for variant, config in configs.items():
            if variant in failed:
                section.skip(f"{variant} at {seq_len:,}", f"ran out of memory at {failed[variant]:,}")
                continue
            rows[variant] = row = _run_or_skip(section, config, last[variant] or last["toolkit"], profile.min_row_s)
            if row is not None:
                last[variant] = row if row["status"] == "ok" else last[variant]
                if row["status"] == "oom":
                    failed[variant] = seq_len
        if seq_len == profile.cli_length:
            at_cli_length(configs["toolkit"], rows.get("toolkit"))


def device_facts() -> dict[str, Any]:
    """The device, its memory, its allocator's settings and a measured bf16 (CUDA) or fp32 (CPU) matmul rate, from a
    fresh process so that this one holds no CUDA context while the measurements run."""
    code = ("import json, torch; from benchmarks.harness import matmul_peak_tflops; from toolkit.environment import "
            "allocator_setting, describe_device, package_versions; from toolkit.plan.memory import GIB; "
            "cuda = torch.cuda.is_available(); device = torch.device('cuda' if cuda else 'cpu'); "
            "print(json.dumps({'device': describe_device(device), "
            "'memory_gib': torch.cuda.get_device_properties(0).total_memory / GIB if cuda else None, "
            "'matmul_tflops': matmul_peak_tflops(), 'allocator': allocator_setting(), "
            "'versions': package_versions()}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=120)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"device facts: {done.stderr[-500:] or 'nothing printed'}")
    return json.loads(lines[-1])
