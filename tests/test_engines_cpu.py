"""The real DeepSpeed engine on two CPU processes over gloo (``accelerate launch`` with
``tests/distributed/cpu-deepspeed-zero{2,3}-2proc.yaml``) trains like one process with the same global batch.

Each engine run is the micro recipe with half the batch per process (two processes draw the rows one process with
the whole batch does) and a tiny needle suite, evaluated before training and after each stage. Against the
one-process run it must give: the same loss at every step, including the second stage's 2 micro-batches
accumulated per step (measured: 2e-7 relative; asserted 1e-5), the same ``final/`` weights (measured: 7e-6 at most;
asserted 2e-5) saved as float32, and every evaluation, with the same scores. The checkpoint DeepSpeed wrote shows
which ZeRO stage and optimizer offload ran, over 2 partitions.

The micro recipe's loss runs in chunks of 48 targets, fewer than a process holds, and the processes hold different
numbers of targets: under ZeRO-3, whose hooks gather the head weight on every head call, they must still make the
same number of calls (``toolkit.memory.chunked_loss``), or they wait for each other forever.

FSDP2 does not run on CPU: accelerate 1.15 sets up FSDP only for GPU processes, so an FSDP2 launch on CPU is
refused (exit 2) instead of training plain data parallel.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.runs import (
    HALF_BATCH,
    ROOT,
    accelerate_launch,
    assert_same_scores,
    assert_same_weights,
    final_weights,
    metrics,
    needle_scores,
    needle_suite,
    train,
)

CONFIGS = ROOT / "tests" / "distributed"
ENGINES = {  # name: (launch config, extra launch options, ZeRO stage, optimizer offload device)
    "zero2": ("cpu-deepspeed-zero2-2proc.yaml", (), 2, "none"),
    "zero3-offload": ("cpu-deepspeed-zero3-2proc.yaml", ("--offload_optimizer_device", "cpu"), 3, "cpu"),
}
"""ZeRO-3 without offload on two processes is launched by tests/test_bf16_master_weights.py (bf16, fp32 masters)
and tests/test_ulysses_cpu.py (sequence parallel)."""
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 2e-5


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[str, ...]]:
    """The micro recipe (loss chunks of 48 targets: processes holding different numbers of targets must still
    make the same number of head calls under ZeRO-3) and the needle suite every run evaluates."""
    from tests.conftest import MICRO_RECIPE, write_recipe

    folder = tmp_path_factory.mktemp("engines")
    return write_recipe(folder, dict(MICRO_RECIPE)), (f"eval.suites=[{needle_suite(folder)}]",)


@pytest.fixture(scope="module")
def one_process(setting: tuple[Path, tuple[str, ...]]) -> Path:
    recipe, overrides = setting
    run = recipe.parent / "one-process"
    assert train(recipe, *overrides, f"output.dir={run}") == 0
    return run


def _zero_settings(run: Path) -> tuple[int, int, str]:
    """ZeRO stage, partition count and optimizer offload device, as DeepSpeed recorded them in the last
    checkpoint."""
    last = sorted((run / "checkpoints").iterdir())[-1]
    saved = torch.load(last / "pytorch_model" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", map_location="cpu",
                       weights_only=False)
    state, config = saved["optimizer_state_dict"], saved["ds_config"]["zero_optimization"]
    count = state["partition_count"]
    count = count[0] if isinstance(count, list) else count
    return state["zero_stage"], count, config.get("offload_optimizer", {}).get("device", "none")


@pytest.mark.slow
@pytest.mark.parametrize("engine", list(ENGINES))
def test_deepspeed_on_two_cpu_processes_trains_like_one(engine: str, setting: tuple[Path, tuple[str, ...]],
                                                        one_process: Path) -> None:
    recipe, overrides = setting
    config, options, stage, offload = ENGINES[engine]
    run = recipe.parent / engine
    result = accelerate_launch(CONFIGS / config, "-m", "toolkit", "train", str(recipe), f"output.dir={run}",
                               *overrides, *HALF_BATCH, options=options)
    assert result.returncode == 0, result.stderr[-3000:]

    info = json.loads((run / "run_info.json").read_text())
    assert (info["processes"], info["data_parallel"], info["engine"]) == (2, 2, "deepspeed")
    assert _zero_settings(run) == (stage, 2, offload)

    one, two = metrics(one_process), metrics(run)
    assert [r["global_step"] for r in two] == [r["global_step"] for r in one]
    assert [r["source_tokens"] for r in two] == [r["source_tokens"] for r in one]  # the same rows were drawn
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=LOSS_RTOL)

    assert_same_weights(final_weights(run), final_weights(one_process), atol=WEIGHT_ATOL, dtype=torch.float32)
    assert json.loads((run / "final" / "config.json").read_text())["dtype"] == "float32"

    scores = needle_scores(run)
    assert len(scores) == 3  # before, after stage 0, after stage 1
    assert_same_scores(scores, needle_scores(one_process))


@pytest.mark.slow
def test_fsdp2_launch_on_cpu_is_refused(tmp_path: Path) -> None:
    from tests.conftest import MICRO_RECIPE, write_recipe

    raw = yaml.safe_load((ROOT / "configs" / "fsdp2.yaml").read_text())
    raw.update(num_processes=2, mixed_precision="no", main_process_port=0)
    config = tmp_path / "fsdp2-cpu.yaml"
    config.write_text(yaml.safe_dump(raw))
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE))
    result = accelerate_launch(config, "-m", "toolkit", "train", str(recipe), f"output.dir={tmp_path / 'run'}",
                               *HALF_BATCH)
    assert result.returncode != 0
    assert "accelerate set up MULTI_CPU" in result.stderr and "asks for FSDP2" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
