"""Which rows each process trains on, checked on 2 CPU processes over gloo (``torchrun --nproc_per_node 2`` running
``tests/distributed/data_ranks.py``, which saves what every rank saw; this process compares it with the stream one
process reads).

- data parallel: accelerate's shard of every global batch; the ranks' rows, in rank order, are the one-process batch
  of twice the size, and the per-source token counts summed over ranks are the one-process counts;
- Ulysses sequence parallel (degree 2): DeepSpeed's own ``UlyssesSPDataLoaderAdapter`` over the data-parallel shards:
  at every micro-step both ranks hold halves of the same rows, the micro-steps walk through the stream once, and the
  loop's target count and the sources' token counts, summed over the ranks, are the rows';
- context parallel (degree 2): both ranks draw the same rows (accelerate with a ``("dp_shard", "cp")`` mesh), torch's
  ``context_parallel`` (through ``shard_for_sequence_parallel`` and accelerate's ``maybe_context_parallel``) gives each
  half a row, and the loop's window (targets summed over ranks over ``row_sharers``) is the rows' target count.

Mixture of two synthetic sources (answer-only and all-token losses), packed with padding, so rows differ in targets,
sources and padding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
import torch

from toolkit.data.batches import PackedRows, StageBatches, as_batch, stage_batches, stage_loader, target_tokens
from toolkit.data.packing import IGNORE_INDEX, PAD_SOURCE
from toolkit.data.tokenizer import train_tokenizer
from toolkit.recipe.data_spec import DataSpec
from toolkit.recipe.schema import TokenizerTraining

ROOT = Path(__file__).resolve().parents[1]
RANKS = ROOT / "tests/distributed/data_ranks.py"
PROCESSES = 2
SPEC: dict[str, Any] = {"packing": "pack", "mixture": [
    {"name": "passkey", "task": "passkey", "weight": 1, "min_length_fraction": 0.2},
    {"name": "multikey", "task": "multikey", "num_keys": 2, "loss_on": "all", "weight": 1, "min_length_fraction": 0.2}]}
SEQ_LEN, BATCH, SEED, STEPS = 128, 2, 0, 3
"""Rows of 128 tokens, 2 rows per process and batch, 3 batches per process."""
ROWS = STEPS * BATCH * PROCESSES
"""Rows of the global stream the data-parallel and Ulysses runs cover."""

Batch = dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(TokenizerTraining(vocab_size=400, corpus_documents=300), seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)  # what the ranks load


SCENARIOS = ("dp", "cp", "ulysses")
"""Run in this order by one launch (``ulysses``, which initialises ``deepspeed.comm`` over the group, last)."""


@pytest.fixture(scope="module")
def launched(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder where one ``torchrun`` of :data:`SCENARIOS` left what each rank saw in each: one launch of 2
    processes for the three tests, not one each (a launch's start-up is most of a scenario's seconds)."""
    out = tmp_path_factory.mktemp("ranks")
    config = out / "config.json"
    config.write_text(json.dumps({"spec": SPEC, "seq_len": SEQ_LEN, "batch_size": BATCH, "seed": SEED,
                                  "steps": STEPS, "tokenizer": str(tokenizer_dir)}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",  # rendezvous on a free port
               "--nproc_per_node", str(PROCESSES), str(RANKS), ",".join(SCENARIOS), str(config), str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return out


def _ranks(scenario: str, out: Path) -> list[dict[str, Any]]:
    """What each of the 2 ranks of ``scenario`` saved, in rank order."""
    seen = [torch.load(out / f"{scenario}-rank{rank}.pt") for rank in range(PROCESSES)]
    assert [s["rank"] for s in seen] == [0, 1] and all(s["processes"] == PROCESSES for s in seen)
    return seen


def _global_batches(tokenizer: Any, batch_size: int, steps: int) -> list[Batch]:
    """The first batches of the stream as one process draws it."""
    return list(islice(stage_loader(DataSpec(**SPEC), tokenizer, SEQ_LEN, batch_size, SEED), steps))


def _rows(batches: list[Batch]) -> list[Batch]:
    return [{key: value[i] for key, value in batch.items()}
            for batch in batches for i in range(len(batch["input_ids"]))]


def _one_process_counts(tokenizer: Any, batch_size: int, draws: int) -> dict[str, Any]:
    """``StageBatches.logged()`` of one process after ``draws`` batches of ``batch_size``."""
    batches = stage_batches(DataSpec(**SPEC), tokenizer, SEQ_LEN, batch_size, SEED)
    for _ in range(draws):
        next(batches)
    return batches.logged()


def _targets(labels: torch.Tensor) -> int:
    """Tokens with a loss in unshifted ``labels`` of one row."""
    return int((labels[1:] != IGNORE_INDEX).sum())


def _shifted(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` shifted left by one, ``IGNORE_INDEX`` at the end (the ``shift_labels`` of a row)."""
    return torch.cat([labels[1:], labels.new_full((1,), IGNORE_INDEX)])


def _source_tokens(sources: torch.Tensor) -> list[int]:
    return torch.bincount(sources[sources != PAD_SOURCE].flatten(), minlength=len(SPEC["mixture"])).tolist()


@pytest.mark.slow
def test_data_parallel_ranks_split_each_global_batch(launched: Path, tokenizer: Any) -> None:
    first, second = _ranks("dp", launched)
    single = _global_batches(tokenizer, BATCH * PROCESSES, STEPS)
    assert all(s["sharers"] == 1 for s in (first, second))
    for step, whole in enumerate(single):
        mine, theirs = first["batches"][step], second["batches"][step]
        assert mine["input_ids"].shape == theirs["input_ids"].shape == (BATCH, SEQ_LEN)
        for row in mine["input_ids"]:
            assert not any(torch.equal(row, other) for other in theirs["input_ids"]), f"step {step}: a shared row"
        for key, value in whole.items():  # input_ids, labels, position_ids, sources
            assert torch.equal(torch.cat([mine[key], theirs[key]]), value), (step, key)
    # StageBatches' per-source token counts, summed over the ranks (what metrics.jsonl logs) are one process's
    expected = _one_process_counts(tokenizer, BATCH * PROCESSES, STEPS)
    assert first["logged"] == second["logged"] == expected
    assert sum(expected["source_tokens"].values()) == sum(
        sum(_source_tokens(r["sources"])) for r in _rows(single))


@pytest.mark.slow
def test_ulysses_ranks_hold_halves_of_the_same_rows(launched: Path, tokenizer: Any) -> None:
    first, second = _ranks("ulysses", launched)
    rows = _rows(_global_batches(tokenizer, BATCH * PROCESSES, STEPS))
    assert len(rows) == ROWS
    where = {tuple(r["input_ids"].tolist()): i for i, r in enumerate(rows)}
    assert len(where) == ROWS  # every row distinct, so a row is known by its tokens
    assert first["sharers"] == second["sharers"] == 1
    half = SEQ_LEN // PROCESSES
    covered = []
    for step, (mine, theirs) in enumerate(zip(first["slices"], second["slices"], strict=True)):
        assert set(mine) == set(theirs) == {"input_ids", "shift_labels", "position_ids", "sources"}
        assert mine["input_ids"].shape == theirs["input_ids"].shape == (BATCH, half)
        whole = {key: torch.cat([mine[key], theirs[key]], dim=1) for key in mine}
        step_targets = 0
        for i in range(BATCH):
            index = where.get(tuple(whole["input_ids"][i].tolist()))
            assert index is not None, f"micro-step {step}: rank 0's half and rank 1's half are not one row"
            covered.append(index)
            row = rows[index]
            assert torch.equal(whole["position_ids"][i], row["position_ids"]), (step, i)
            assert torch.equal(whole["sources"][i], row["sources"]), (step, i)
            assert torch.equal(whole["shift_labels"][i], _shifted(row["labels"])), (step, i)
            # the loop's count on each rank's half of this row, summed: the row's targets
            halves = [target_tokens(as_batch({key: value[i:i + 1] for key, value in part.items()}))
                      for part in (mine, theirs)]
            assert int(sum(halves)) == _targets(row["labels"]), (step, i)
            # StageBatches' counts of each half, summed: the row's non-padding tokens by source
            assert [a + b for a, b in zip(_source_tokens(mine["sources"][i]), _source_tokens(theirs["sources"][i]),
                                          strict=True)] == _source_tokens(row["sources"]), (step, i)
            step_targets += _targets(row["labels"])
        # what train_step counts per micro-step on each rank, and its window summed over the ranks
        assert first["targets"][step] + second["targets"][step] == step_targets, step
        assert first["windows"][step] == second["windows"][step] == step_targets, step
    assert covered == list(range(ROWS))  # micro-steps walk through the group's rows, each once, in stream order
    # StageBatches over the adapter on each rank, replayed here on the saved halves and logged in the ranks
    counted = []
    for seen in (first, second):
        replay = StageBatches(iter(seen["slices"]), PackedRows(DataSpec(**SPEC), tokenizer, SEQ_LEN, SEED))
        for _ in seen["slices"]:
            batch = next(replay)
            assert "sources" not in batch
        counted.append(replay.tokens)
    assert [a + b for a, b in zip(*counted, strict=True)] == [sum(c) for c in zip(
        *(_source_tokens(r["sources"]) for r in rows), strict=True)]
    assert first["logged"] == second["logged"] == _one_process_counts(tokenizer, BATCH * PROCESSES, STEPS)


def _triples(input_ids: torch.Tensor, shift_labels: torch.Tensor, position_ids: torch.Tensor) -> Counter:
    """A row (or a slice of one) as the multiset of its (token, target, position) triples."""
    return Counter(zip(input_ids.tolist(), shift_labels.tolist(), position_ids.tolist(), strict=True))


@pytest.mark.slow
def test_context_parallel_ranks_slice_the_same_rows(launched: Path, tokenizer: Any) -> None:
    first, second = _ranks("cp", launched)
    single = _global_batches(tokenizer, BATCH, STEPS)  # one group of 2 ranks: the one-process stream of batch BATCH
    assert first["sharers"] == second["sharers"] == PROCESSES  # row_sharers of the stand-in's ParallelismConfig
    half = SEQ_LEN // PROCESSES
    for step, whole in enumerate(single):
        for seen in (first, second):
            for key, value in whole.items():
                assert torch.equal(seen["rows"][step][key], value), (step, key)
                if key != "sources":  # popped by StageBatches before the loop sees the batch
                    assert torch.equal(seen["full"][step][key], value), (step, key)
            assert set(seen["sliced"][step]) == {"input_ids", "shift_labels", "position_ids"}
            assert all(t.shape == (BATCH, half) for t in seen["sliced"][step].values())
        mine, theirs = first["sliced"][step], second["sliced"][step]
        step_targets = 0
        for i in range(BATCH):
            row = _triples(whole["input_ids"][i], _shifted(whole["labels"][i]), whole["position_ids"][i])
            halves = [_triples(part["input_ids"][i], part["shift_labels"][i], part["position_ids"][i])
                      for part in (mine, theirs)]
            assert halves[0] + halves[1] == row, (step, i)  # every token once, wherever the load balancer put it
            step_targets += _targets(whole["labels"][i])
        # train_step: targets of the full rows summed over the ranks, over row_sharers; and the losses each rank
        # then sums over its slice cover exactly those targets
        assert first["windows"][step] == second["windows"][step] == step_targets, step
        assert first["slice_targets"][step] + second["slice_targets"][step] == step_targets, step
    # both ranks counted the same tokens; logged() divides their sum by row_sharers
    assert first["logged"] == second["logged"] == _one_process_counts(tokenizer, BATCH, STEPS)
