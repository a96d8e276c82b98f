"""The longest-context probe on CPU at tiny shapes: live tensor bytes, host bytes of offloaded inputs and the
extrapolation from one and two layers to the full depth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.context_probe import LiveBytes, Probe, extrapolate, main, measure_step, probe_lengths

TINY = Probe(shape="tiny", seq_len=512, layers_total=32, tiles=2, loss_chunk=64, device="cpu", bf16=False)
INPUT = 512 * 128  # elements of one layer's input (seq_len x hidden): OffloadStore.SMALL


def test_live_bytes_counts_tensors_alive_and_the_peak() -> None:
    with LiveBytes() as tracker:
        a = torch.ones(1000)  # 4,000 bytes
        b = a * 2
        c = b + 1
        del a
    assert tracker.live == 8000 and tracker.peak == 12000
    del b, c
    assert tracker.live == 0


def test_offloaded_fp8_inputs_are_host_bytes_and_extrapolate_per_layer() -> None:
    probe = Probe(**{**TINY.__dict__, "offload": 32, "fp8": True})
    one, two = measure_step(probe, 1), measure_step(probe, 2)
    assert (one["host_bytes"], two["host_bytes"]) == (INPUT, 2 * INPUT)  # one byte per element per layer
    assert two["loss"] == pytest.approx(6.2, abs=0.3)  # ln 512 at random init
    row = extrapolate(one, two, probe)
    assert row["host_gib"] * 1024**3 == 32 * INPUT
    assert row["device_gib"] * 1024**3 == two["device_bytes"]  # every further layer is offloaded
    assert row["step_s"] == pytest.approx(two["step_s"] + 30 * (two["step_s"] - one["step_s"]))


def test_layers_kept_on_the_device_cost_device_bytes() -> None:
    [row] = probe_lengths(TINY, [512])
    one, two = row["measured"]
    per_layer = two["device_bytes"] - one["device_bytes"]
    assert per_layer >= INPUT * 4  # at least its float32 input stays
    assert row["host_gib"] == 0 and row["device_gib"] * 1024**3 == two["device_bytes"] + 30 * per_layer


def test_command_line_prints_the_table_of_the_rows_it_writes(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "probe.json"
    main(["--device", "cpu", "--shape", "tiny", "--fp32", "--seq-len", "512", "--offload", "16", "--fp8", "--tiles",
          "2", "--loss-chunk", "64", "--json", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| seq_len | per layer device GiB | per layer host GiB | per layer s | 32 layers:")
    [row] = json.loads(out.read_text())["rows"]
    assert row["host_gib"] * 1024**3 == 16 * INPUT  # the first 16 layers keep their inputs there, in fp8
    two = row["measured"][1]
    assert row["device_gib"] * 1024**3 == two["device_bytes"] + 16 * INPUT * 4  # the other 16, in float32 on the device
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert cells == ["512", f"{row['per_layer_device_gib']:.3f}", f"{row['per_layer_host_gib']:.3f}",
                     f"{row['per_layer_s']:.2f}", f"{row['device_gib']:.2f}", "-", f"{row['host_gib']:.2f}",
                     f"{row['step_s']:.1f}"]
