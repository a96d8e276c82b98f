"""DeepSpeed Ulysses sequence parallelism (``parallel: {sequence: ulysses, degree: 2}``) on two CPU processes over
gloo (``accelerate launch --config_file tests/distributed/cpu-deepspeed-zero3-2proc.yaml``) trains like one process
on the same rows.

The run is the micro recipe with sdpa attention, padded rows and batch 2 in both stages (Ulysses' attention is built
for one micro-batch size), launched through ``tests/distributed/ulysses_probe.py``, which records what DeepSpeed's
Ulysses attention did on each rank. accelerate shards the row stream by process; DeepSpeed's adapter then takes the
group's batches one process's batch per micro-step, each rank half of every row. So the two processes (one
data-parallel group) consume, micro-step by micro-step, the rows one process with the same batch and accumulation
does, and must give: the same loss at every step, including the second stage's 2 micro-batches accumulated per step
(measured: 2e-7 relative; asserted 1e-5), the same ``final/`` weights (measured: 2e-6 at most; asserted 2e-5) and the
same needle scores after every stage. Every micro-step's attention ran on half rows (32 and 64 tokens) and
all-to-all'ed them to whole rows (64 and 128) on both ranks.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from tests.runs import (
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

CONFIG = ROOT / "tests" / "distributed" / "cpu-deepspeed-zero3-2proc.yaml"
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 2e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The one-process run, the Ulysses run and the folder of the Ulysses ranks' records."""
    from tests.conftest import MICRO_RECIPE, write_recipe

    folder = tmp_path_factory.mktemp("ulysses")
    suite = needle_suite(folder)
    recipe = copy.deepcopy(MICRO_RECIPE)
    recipe["model"]["attention"] = "sdpa"
    recipe["train"]["data"]["packing"] = "pad"
    recipe["train"]["stages"][0]["batch_size"] = 2  # one batch size in every stage; stage 1: 2 x grad_accum 2
    single = write_recipe(folder, recipe, "one-process.yaml")
    ulysses = write_recipe(folder, dict(recipe, parallel={"sequence": "ulysses", "degree": 2}), "ulysses.yaml")
    evaluations = f"eval.suites=[{suite}]"

    one = folder / "one-process"
    assert train(single, evaluations, f"output.dir={one}") == 0

    two, records = folder / "ulysses", folder / "records"
    result = accelerate_launch(CONFIG, "-m", "tests.distributed.ulysses_probe", "train", str(ulysses),
                               f"output.dir={two}", evaluations, env={"ULYSSES_PROBE_OUT": str(records)})
    assert result.returncode == 0, result.stderr[-3000:]
    return one, two, records


@pytest.mark.slow
def test_ulysses_on_two_cpu_processes_trains_like_one(runs: tuple[Path, Path, Path]) -> None:
    one, two, records = runs

    info = json.loads((two / "run_info.json").read_text())
    assert (info["processes"], info["data_parallel"], info["engine"], info["attention"]) == (2, 1, "deepspeed",
                                                                                           "sdpa")
    assert [stage["steps"] for stage in info["stages"]] == [6, 4]

    # Ulysses ran: 2 layers x (6 + 4 x 2) micro-steps of half rows, all-to-all'ed to whole rows, on both ranks; rank
    # 0's evaluations ran outside DeepSpeed's wrapper (toolkit.parallel.sequence.without_ulysses_attention), which
    # drops masks
    ranks = [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)]
    for record in ranks:
        assert record["attended_lengths"] == {"64": 12, "128": 16}
        assert record["local_lengths"] == {"32": 12, "64": 16}
    assert ranks[0]["calls"]["all_to_all"] == ranks[1]["calls"]["all_to_all"] > 0

    a, b = metrics(one), metrics(two)
    assert [r["global_step"] for r in b] == [r["global_step"] for r in a] == list(range(1, 11))
    assert [r["source_tokens"] for r in b] == [r["source_tokens"] for r in a]  # the same rows were drawn
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=LOSS_RTOL)

    assert_same_weights(final_weights(two), final_weights(one), atol=WEIGHT_ATOL, dtype=torch.float32)

    scores = needle_scores(two)
    assert len(scores) == 3  # before, after stage 0, after stage 1
    assert_same_scores(scores, needle_scores(one))
