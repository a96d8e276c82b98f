"""The benchmark harness measures the toolkit's step and the plain baseline on the same model; the context
search finds the boundary with doubling then bisection."""

from __future__ import annotations

from dataclasses import replace

import pytest

from benchmarks.harness import Config, run
from benchmarks.max_context import longest_fitting


@pytest.mark.parametrize("boundary, expected", [(5000, 4608), (1023, 0), (1 << 20, 65536), (2048, 2048)])
def test_longest_fitting(boundary: int, expected: int) -> None:
    probes: list[int] = []

    def fits(length: int) -> bool:
        probes.append(length)
        return length <= boundary

    assert longest_fitting(fits, start=1024, granularity=512, limit=65536) == expected
    assert len(probes) <= 2 + 7 + 6  # start, doublings to the limit, bisection steps


def test_toolkit_and_baseline_train_the_same_model() -> None:
    common = Config(shape="tiny", method="full", seq_len=128, steps=1, peak_tflops=1.0)
    toolkit = run(replace(common, loss_chunk=32, tiles=2))
    baseline = run(replace(common, variant="baseline"))
    assert toolkit["status"] == baseline["status"] == "ok"
    assert toolkit["loss"] == pytest.approx(baseline["loss"], rel=1e-4)  # same data, same updates, two code paths
    assert toolkit["tokens_per_s"] > 0 and 0 < toolkit["mfu"] and toolkit["peak_gib"] > 0
