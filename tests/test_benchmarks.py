"""The benchmark harness measures the toolkit's own loop and the plain baseline on the same model and rows; a
configuration that outlives its budget is a result; the context search finds the boundary with doubling then
bisection and stops when its time runs out."""

from __future__ import annotations

import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

import toolkit.training.loop
from benchmarks import max_context
from benchmarks.harness import Config, for_length, measure, run
from benchmarks.max_context import longest_fitting, search


@pytest.mark.parametrize("boundary, expected", [(5000, 4608), (1023, 0), (1 << 20, 65536), (2048, 2048)])
def test_longest_fitting(boundary: int, expected: int) -> None:
    probes: list[int] = []

    def fits(length: int) -> bool:
        probes.append(length)
        return length <= boundary

    assert longest_fitting(fits, start=1024, granularity=512, limit=65536) == expected
    assert len(probes) <= 2 + 7 + 6  # start, doublings to the limit, bisection steps


@pytest.mark.parametrize("method", ["full", "lora"])
def test_toolkit_loop_and_baseline_train_the_same_model(method: str, monkeypatch) -> None:
    loops = []
    original = toolkit.training.loop.train_stage

    def train_stage(*args):
        loops.append(1)
        return original(*args)

    monkeypatch.setattr(toolkit.training.loop, "train_stage", train_stage)
    common = Config(shape="tiny", method=method, seq_len=128, steps=2, peak_tflops=1.0)
    ours = run(replace(common, loss_chunk=32, tiles=2))
    baseline = run(replace(common, variant="baseline"))
    assert loops == [1]  # the toolkit variant trained through train_stage, once
    assert ours["status"] == baseline["status"] == "ok" and ours["attention_used"] == "sdpa"
    # same weights, same packed rows, same clipping and updates through two code paths: the same 3 losses
    assert len(ours["losses"]) == 3 and ours["losses"] == pytest.approx(baseline["losses"], rel=1e-5)
    assert ours["losses"][0] == pytest.approx(6.238, abs=0.01)  # about ln(512) at random init
    assert ours["tokens_per_s"] > 0 and ours["mfu"] > 0 and ours["reserved_gib"] is None  # CPU: no reserve


def test_offload_and_tiles_apply_per_length() -> None:
    toolkit = Config(tiles=8)
    assert for_length(toolkit, 8192, 65536, 32768) == replace(toolkit, seq_len=8192, tiles=None)
    assert for_length(toolkit, 65536, 65536, 32768) == replace(toolkit, seq_len=65536, offload=True)
    baseline = replace(toolkit, variant="baseline")
    assert for_length(baseline, 65536, 0, 0) == replace(baseline, seq_len=65536, tiles=None)


def test_configuration_past_its_budget_is_a_timeout_row() -> None:
    started = time.monotonic()
    result = measure(Config(shape="tiny", seq_len=128), budget_s=1)
    assert result["status"] == "timeout" and result["seq_len"] == 128
    assert time.monotonic() - started < 10


def test_context_search_stops_when_its_time_runs_out(monkeypatch) -> None:
    clock = [0.0]
    calls: list[tuple[int, float]] = []

    def fake_measure(config: Config, budget_s: float) -> dict:
        calls.append((config.seq_len, budget_s))
        clock[0] += 40  # each probe takes 40 s
        return {"seq_len": config.seq_len, "status": "ok", "peak_gib": config.seq_len / 1e6}

    monkeypatch.setattr(max_context, "measure", fake_measure)
    monkeypatch.setattr(max_context, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    result = search(Config(), None, 1024, 1024, 1 << 30, probe_s=60, deadline=150, min_probe_s=30)
    # probes start at 0, 40, 80 (70 s left: budget 60), 120 (30 s left: budget 30); at 160 none is left
    assert calls == [(1024, 60), (2048, 60), (4096, 60), (8192, 30)]
    assert result["complete"] is False and result["max_seq_len"] == 8192
