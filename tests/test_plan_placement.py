"""Placement at one GPU's limit: host memory in the plan (offloaded layers, fp8, pinned blocks), a placement that
fits the GPU and the host, the H200 probe's prediction, and a run that would not fit in host memory stopping before
its model is loaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.runs import train
from toolkit.cli import main
from toolkit.memory import lean_norm
from toolkit.plan.command import advice, plan, print_plan
from toolkit.plan.memory import GIB, HOST_OVERHEAD, KNOWN_SHAPES, LEAN_NORM_CHUNK_COPIES, Setup, estimate, pinned_block
from toolkit.plan.placement import HOST_MEMORY_ENV, available_memory, fit, machine_memory, placement
from toolkit.recipe.loading import load_recipe
from toolkit.recipe.schema import Recipe

LLAMA3_8B = KNOWN_SHAPES["meta-llama/Meta-Llama-3-8B"]
LORA_512K = Setup(seq_len=524288, checkpointing=True, tiles=16, loss_chunk=4096, lora_rank=16,
                  lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"))
"""Llama-3-8B LoRA at 512K tokens with the memory switches on, nothing offloaded."""
ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "docs" / "measurements" / "2026-12-04-h200" / "probe-512k-2layer.md"
"""What the 2-layer probe measured on an H200, with its recipe."""


def test_host_memory_per_offloaded_layer_fp8_and_pinned_blocks() -> None:
    base = LORA_512K
    layer = 524288 * 4096 * 2  # one layer's input in bf16: 4 GiB
    assert estimate(LLAMA3_8B, base.with_(offload=True)).host == 32 * layer  # 128 GiB: all of an H200 host's RAM
    assert estimate(LLAMA3_8B, base.with_(offload=12)).host == 12 * layer
    assert estimate(LLAMA3_8B, base.with_(offload=12, offload_fp8=True)).host == 12 * layer // 2
    assert estimate(LLAMA3_8B, base).host == 0
    # CUDA's caching host allocator rounds each pinned block up to a power of two: 384K tokens take 4 GiB, not 3
    assert estimate(LLAMA3_8B, base.with_(seq_len=393216, offload=1)).host == 4 * GIB
    assert pinned_block(3 * GIB) == 4 * GIB and pinned_block(4 * GIB) == 4 * GIB and pinned_block(0) == 0
    # the GPU keeps the inputs of the layers not offloaded (at least the one recomputed and the one fetched next)
    kept = {n: estimate(LLAMA3_8B, base.with_(offload=n)).parts["activations kept"] for n in (0, 12, 30, 32)}
    assert kept == {0: 32 * layer, 12: 20 * layer, 30: 2 * layer, 32: 2 * layer}
    assert estimate(LLAMA3_8B, base).host_needed == HOST_OVERHEAD


def test_placement_offloads_the_fewest_layers_that_fit_both() -> None:
    """Llama-3-8B LoRA at 512K on one 141 GiB GPU with 128 GiB of host memory: all 32 layers offloaded as computed
    would need all the host's RAM; the placement offloads just enough, in fp8 when the host needs it."""
    setup = LORA_512K
    gpu, host = 141 * GIB, 128 * GIB
    everything = fit(LLAMA3_8B, setup.with_(offload=True), gpu, host)
    assert everything.estimate.host == 128 * GIB and not everything.host_fits
    found = placement(LLAMA3_8B, setup, gpu, host)
    assert found is not None
    placed, result = found
    assert result.gpu_fits and result.host_fits
    fewer = fit(LLAMA3_8B, placed.with_(offload=placed.offload - 1), gpu, host)
    assert not (fewer.gpu_fits and fewer.host_fits)  # one layer fewer does not fit
    assert placement(LLAMA3_8B, setup, gpu, 8 * GIB) is None  # not even fp8 fits 8 GiB of host memory


def test_the_h200_probe_before_and_after(capsys: pytest.CaptureFixture[str]) -> None:
    """The 2-layer 8B probe at 512K measured 87.2 GiB allocated, 106 GiB reserved on an H200; the plan said 65.2
    before it counted the recomputed layer's norms and backward, and the allocator's reserve."""
    recipe_yaml = PROBE.read_text().split("```yaml\n")[1].split("```")[0]
    recipe = Recipe.model_validate(__import__("yaml").safe_load(recipe_yaml))
    recipe.train.lean_rmsnorm = False  # the measured run had transformers' norms, with their float32 copies
    print_plan(plan(recipe, gpus=1, gpu_memory_gib=141, host_memory_gib=128))
    rows = {line[:34].strip(): line[34:].strip() for line in capsys.readouterr().out.splitlines()}
    total = float(rows["total per GPU (GiB)"])
    held = total - float(rows["allocator reserve (GiB)"]) - float(rows["runtime overhead (GiB)"])
    assert 87.2 <= held <= 87.2 * 1.1  # allocated: within 10 % above the measured peak
    assert 106.0 <= total <= 106.0 * 1.05  # what has to fit: reserved plus the CUDA context
    assert float(rows["host, a node's processes (GiB)"]) == pytest.approx(12.6, abs=0.05)  # measured: 12.6 GiB resident
    assert rows["verdict"] == "FITS" and rows["host verdict"] == "FITS"


def test_the_lean_norm_in_the_plan() -> None:
    """Per token of the recomputed layer: the two norms' float32 copies less the second norm's bf16 input, and the
    backward's float32 temporaries, which the lean norm holds for one chunk of rows (``tests/test_lean_norm.py``
    measures the growth per token); fp32 runs are unchanged; a bf16 recipe without it is advised it first."""
    h, tokens = LLAMA3_8B.hidden, 524288
    plain, lean = LORA_512K, LORA_512K.with_(lean_norm=True)
    saved = estimate(LLAMA3_8B, plain).parts["layer working set"] - estimate(LLAMA3_8B, lean).parts["layer working set"]
    assert saved == tokens * (6 + 12) * h - LEAN_NORM_CHUNK_COPIES * 4 * h * lean_norm.CHUNK_ROWS == 35.5 * GIB
    fp32 = plain.with_(param_bytes=4)
    assert estimate(LLAMA3_8B, fp32).parts == estimate(LLAMA3_8B, fp32.with_(lean_norm=True)).parts
    assert advice(LLAMA3_8B, plain, 100 * GIB).lines[0].startswith("train.lean_rmsnorm: true -> ")


def test_the_one_gpu_512k_recipe_fits_an_h200_with_room() -> None:
    """recipes/llama3-8b-512k-lora-1gpu.yaml on an H200 (139.8 GiB) with 128 GiB of host memory: both stages fit, the
    524K one within 130 GiB of GPU and 110 GiB of host memory; its placement is more than the fewest layers."""
    recipe = load_recipe(ROOT / "recipes" / "llama3-8b-512k-lora-1gpu.yaml")
    planned = plan(recipe, gpus=1, gpu_memory_gib=139.8, host_memory_gib=128)
    assert planned.fitting_stages == 2
    long = planned.fits[-1]
    assert long.estimate.total / GIB <= 130 and long.host / GIB <= 110
    fewest = placement(LLAMA3_8B, planned.setups[-1], long.gpu_budget, long.host_budget)
    assert fewest is not None and 0 < fewest[0].offload < planned.setups[-1].offload
    one_fewer = fit(LLAMA3_8B, fewest[0].with_(offload=fewest[0].offload - 1), long.gpu_budget, long.host_budget)
    assert not (one_fewer.gpu_fits and one_fewer.host_fits)  # the fewest offloaded layers that fit both


def test_plan_says_whether_the_host_fits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A stage that does not fit the host: its numbers, and exit code 1 (as a run that would not fit stops)."""
    assert main(["plan", str(_offload_recipe(tmp_path)), "--gpu-memory", "80", "--host-memory", "0.001"]) == 1
    out, err = capsys.readouterr()
    assert not err
    assert next(line for line in out.splitlines() if line.startswith("host verdict")).split()[2:] == \
        ["DOES", "NOT", "FIT"] * 2
    assert "host needs 4.6 GiB of 0.0" in out and "no placement of offloaded layers fits both" in out
    assert "verdict: 0 of 2 stage(s) fit the GPU and the host" in out


def test_placement_is_sought_with_the_advised_switches_on(capsys: pytest.CaptureFixture[str]) -> None:
    """Full fine-tuning of the 8B at 512K fits no single 141 GiB GPU (the sequence not split) however its layers are
    placed; with LoRA, the switch advised, it does: the placement is given for that, not denied."""
    recipe = load_recipe(ROOT / "recipes" / "llama3-8b-prolong-512k.yaml", ["parallel.sequence=none",
                                                                           "parallel.degree=1"])
    planned = plan(recipe, gpus=1, gpu_memory_gib=141, host_memory_gib=128)
    print_plan(planned)
    out = capsys.readouterr().out
    needs = estimate(LLAMA3_8B, planned.setups[1]).total / GIB
    assert needs > 141 and f"prolong-512k: needs {needs:.1f} GiB of 141; switch on, in order:\n" in out
    advised = next(line for line in out.splitlines() if line.startswith("  - method.kind: lora -> "))
    assert float(advised.split("-> ")[1].split(" GiB")[0]) <= 141
    assert "no placement" not in out
    placed = next(line for line in out.splitlines() if line.startswith("prolong-512k: placement"))
    assert placed.startswith("prolong-512k: placement that fits both with the switches above: "
                             "train.activation_offload: ")
    assert float(placed.split("GPU ")[1].split(" GiB")[0]) <= 141


def test_host_memory_of_this_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(HOST_MEMORY_ENV, raising=False)
    assert machine_memory() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   1000000 kB\n")
    assert available_memory(meminfo) == 1000000 * 1024
    monkeypatch.setenv(HOST_MEMORY_ENV, "2.5")
    assert machine_memory() == available_memory(meminfo) == int(2.5 * GIB)


@pytest.mark.parametrize("value", ["abc", "-5", "0", "inf", ""])
def test_a_host_memory_setting_that_is_no_amount_is_one_line(value: str, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(HOST_MEMORY_ENV, value)
    assert main(["plan", str(ROOT / "recipes" / "tiny-passkey.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: TOOLKIT_HOST_MEMORY_GIB: {value!r} is no positive number of GiB"


def test_the_plan_names_where_its_host_memory_comes_from(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(HOST_MEMORY_ENV, "16")
    assert main(["plan", str(ROOT / "recipes" / "tiny-passkey.yaml")]) == 0  # every stage fits
    assert "host 16.0 GiB (TOOLKIT_HOST_MEMORY_GIB)" in capsys.readouterr().out.splitlines()[0]


def _offload_recipe(tmp_path: Path) -> Path:
    from tests.conftest import MICRO_RECIPE, write_recipe

    train_block = {**MICRO_RECIPE["train"], "gradient_checkpointing": True, "activation_offload": 1}
    return write_recipe(tmp_path, dict(MICRO_RECIPE, train=train_block, output={"dir": str(tmp_path / "run")}))


def test_run_that_would_not_fit_in_host_memory_stops_before_loading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import toolkit.training.session

    loads = []
    monkeypatch.setattr(toolkit.training.session, "_load_model", lambda *args: loads.append(1))
    monkeypatch.setenv(HOST_MEMORY_ENV, "0.5")
    assert train(_offload_recipe(tmp_path)) == 1
    failures = [line for line in capsys.readouterr().err.splitlines() if line.startswith("failed:")]
    assert len(failures) == 1 and not loads
    assert "host memory: stage" in failures[0] and "GiB available" in failures[0] and "0.5 GiB available" in failures[0]
    assert "train.activation_offload: N" in failures[0] and "activation_offload_dtype: fp8" in failures[0]


def test_a_cluster_host_holds_one_nodes_processes() -> None:
    """64 GPUs, 8 to a node: each host holds 8 processes' offloaded activations, not 64; the GPU side is the same."""
    recipe = load_recipe(ROOT / "recipes" / "llama3-8b-prolong-512k.yaml")
    one_host = plan(recipe, gpus=64, gpu_memory_gib=80, host_memory_gib=1024)
    nodes = plan(recipe, gpus=64, gpu_memory_gib=80, host_memory_gib=1024, gpus_per_node=8)
    for whole, node in zip(one_host.fits, nodes.fits, strict=True):
        assert (whole.processes, node.processes) == (64, 8) and whole.host == 8 * node.host > 0
        assert node.estimate.total == whole.estimate.total
    assert [f.host_fits for f in nodes.fits] == [True, True, True]
    assert [f.host_fits for f in one_host.fits] == [True, False, True]  # 64 x 16 GiB at 512K on one host
