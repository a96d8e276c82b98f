"""The benchmark's rows as a recipe for the command line (``python -m toolkit train``): the documents of the rows the
toolkit variant trains on (:func:`benchmarks.harness.bench_rows`), in order, as a JSONL file of token ids read with
``format: tokens`` and ``shuffle: false``, and the benchmark's own recipe (:func:`benchmarks.toolkit_variant.
bench_recipe`: shape, seed, random weights, LoRA, checkpointing, offload, tiles, loss chunk, lr, steps) reading it.
Packed by the data path, the file gives the benchmark's rows token for token (``tests/test_benchmarks.py``). It holds
the documents of one row more than the steps train on, so that the last trained row closes where the benchmark's
did: at the document that follows it, not at the file's first one again."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.harness import Config, bench_rows
from benchmarks.toolkit_variant import bench_recipe
from toolkit.recipe.data_spec import DataSpec
from toolkit.recipe.loading import dump_recipe

RECIPE, ROWS, RUN = "recipe.yaml", "rows.jsonl", "run"
"""What :func:`write_cli_recipe` writes into its folder: the recipe, the rows' documents, and the run folder the
recipe names."""


def write_cli_recipe(config: Config, folder: Path) -> Path:
    """``folder/recipe.yaml``: the benchmark's recipe for ``config`` training on ``folder/rows.jsonl``, its run
    folder ``folder/run``; both files written here."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ROWS).open("w") as out:
        for step in bench_rows(config, extra=1):
            for start, length in step.documents:
                out.write(json.dumps({"input_ids": step.row["input_ids"][start:start + length]}) + "\n")
    rows = DataSpec(source="jsonl", path=str(folder / ROWS), format="tokens", shuffle=False)
    dump_recipe(bench_recipe(config, folder / RUN, rows), folder / RECIPE)
    return folder / RECIPE
