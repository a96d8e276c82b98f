"""The benchmark harness measures the toolkit's own loop and the plain baseline on the same model and rows; a
configuration that outlives its budget is a result; the context search finds the boundary with doubling then
bisection and stops when its time runs out."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from types import SimpleNamespace
from typing import cast

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
    assert ours["losses"][0] == pytest.approx(math.log(512), abs=0.1)  # a uniform guess over the 512 tokens at init
    assert ours["tokens_per_s"] > 0 and ours["mfu"] > 0 and ours["reserved_gib"] is None  # CPU: no reserve
    # one document fills each row: every token is real; 2 timed steps, their median between the two
    assert ours["real_fraction"] == 1.0 and ours["documents"] == [[128], [128]] and ours["mfu_spec"] is None
    assert ours["step_s_min"] <= ours["step_s"] <= ours["step_s_max"]


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


def test_mixture_rows_are_real_documents_packed_and_unpacked_alike() -> None:
    """Mixture rows: heavy-tailed document lengths packed by the toolkit's packing (whole documents side by side,
    one that no longer fits opening the next row), each row's documents where the positions restart, padding
    excluded; the same configuration draws the same rows."""
    from benchmarks.rows import MIN_DOCUMENT, step_rows
    from toolkit.data.packing import IGNORE_INDEX

    seq_len, vocab, pad_id = 1024, 512, 2
    rows = step_rows("mixture", seq_len, vocab, 4, pad_id=pad_id)
    assert [step.row for step in rows] == [step.row for step in step_rows("mixture", seq_len, vocab, 4, pad_id)]
    assert [step.row for step in rows] != [step.row for step in step_rows("mixture", seq_len, vocab, 4, pad_id, 1)]
    assert len(rows) == 4 and any(len(step.lengths) > 1 for step in rows)  # packed: rows of several documents
    for step, following in zip(rows, [*rows[1:], None], strict=True):
        row, real = step.row, sum(step.lengths)
        assert all(len(column) == seq_len for column in row.values()) and real <= seq_len
        assert all(MIN_DOCUMENT <= n <= seq_len for n in step.lengths)
        # the documents lie side by side from the row's start, positions counting from 0 in each
        assert [start for start, _ in step.documents] == [sum(step.lengths[:i]) for i in range(len(step.lengths))]
        for start, n in step.documents:
            assert row["position_ids"][start:start + n] == list(range(n))
            assert all(3 <= token < vocab for token in row["input_ids"][start:start + n])
            # loss on every token but the document's first (the packing ignores it: nothing before it to predict)
            assert row["labels"][start:start + n] == [IGNORE_INDEX, *row["input_ids"][start + 1:start + n]]
        # the padding tail: the tokenizer's pad id, no loss
        assert set(row["input_ids"][real:]) <= {pad_id} and set(row["labels"][real:]) <= {IGNORE_INDEX}
        if following is not None:  # the next row's first document did not fit in what this one left
            assert real + following.lengths[0] > seq_len


def test_attention_kernels_time_the_varlen_adapter_on_cpu() -> None:
    """On CPU only the varlen path runs (over the reference kernel); its FLOPs are one layer's causal attention
    forward and backward: 6 · 4 heads · 32 dims · 64² = 3,145,728."""
    from benchmarks.attention_kernels import main

    [row] = main(["--shape", "tiny", "--seq-len", "64", "--repeats", "2"])
    assert row["kernel"] == "varlen_fa2" and "error" not in row
    assert row["spread"][0] <= row["seconds"] <= row["spread"][1]
    assert row["tflops"] * row["seconds"] * 1e12 == pytest.approx(3_145_728)


def test_attention_kernels_run_the_kernels_asked_for() -> None:
    """``--kernels`` picks; one this device does not offer is refused in one line (exit 2)."""
    from benchmarks.attention_kernels import main

    [row] = main(["--shape", "tiny", "--seq-len", "64", "--repeats", "1", "--kernels", "varlen_fa2"])
    assert row["kernel"] == "varlen_fa2" and row["first_s"] > 0
    with pytest.raises(SystemExit) as refused:
        main(["--shape", "tiny", "--seq-len", "64", "--kernels", "flash_attn_4"])
    assert refused.value.code == 2


def test_packed_mixture_rows_train_like_their_documents_unpacked() -> None:
    """Mixture rows: the toolkit trains them packed, the baseline each document alone; same losses at every step,
    real tokens counted without the padding."""
    common = Config(shape="tiny", method="lora", seq_len=256, steps=2, peak_tflops=1.0, rows="mixture")
    ours, baseline = run(common), run(replace(common, variant="baseline"))
    assert ours["documents"] == baseline["documents"] and len(ours["documents"][0]) > 1
    assert ours["losses"] == pytest.approx(baseline["losses"], rel=1e-5)
    real = sum(map(sum, ours["documents"]))
    assert ours["real_fraction"] == pytest.approx(real / (2 * 256)) and real < 2 * 256
    assert ours["real_tokens_per_s"] == pytest.approx(ours["tokens_per_s"] * ours["real_fraction"])


@pytest.mark.parametrize("rows", ["one-document", "mixture"])
def test_the_cli_recipe_packs_the_benchmark_rows_token_for_token(rows: str, tmp_path) -> None:
    """The recipe gpu-check's CLI run trains (``benchmarks/cli_rows.py``), read as a run reads it, packs the rows the
    toolkit variant trains on: ids, labels, positions and sources, padding included; the same steps, one row each."""
    import torch

    from benchmarks.cli_rows import write_cli_recipe
    from benchmarks.harness import bench_rows
    from toolkit.data.batches import stage_loader
    from toolkit.data.tokenizer import load_tokenizer
    from toolkit.recipe.loading import load_recipe

    config = Config(shape="tiny", seq_len=256, rows=rows)
    recipe = load_recipe(str(write_cli_recipe(config, tmp_path)))
    stage, expected = recipe.train.stages[0], bench_rows(config)
    assert (stage.seq_len, stage.batch_size, stage.max_steps) == (256, 1, len(expected))
    loader = stage_loader(recipe.train.stage_data(0), load_tokenizer(recipe.model, recipe.seed), stage.seq_len,
                          stage.batch_size, recipe.seed)
    for batch, step in zip(loader, expected, strict=False):
        drawn = {key: value.tolist() for key, value in cast(dict[str, torch.Tensor], batch).items()}
        assert drawn == {key: [values] for key, values in step.row.items()}
    assert rows == "one-document" or any(0 < sum(step.lengths) < 256 for step in expected)  # padding compared too
