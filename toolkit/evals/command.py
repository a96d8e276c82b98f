"""``python -m toolkit eval --model M [--adapter A] --suite S ... [--out DIR] [--device D] [--max-length N]
[--precision P]``."""

from __future__ import annotations

import re
from pathlib import Path

from toolkit.evals.accuracy_table import accuracy_table
from toolkit.evals.api import run_suites_into
from toolkit.evals.registry import headline
from toolkit.evals.results import write_json
from toolkit.evals.suite import load_suite


def default_out(model: str) -> Path:
    """``eval-results/<model name>``: a folder's name, or a hub id with ``/`` turned into ``--``."""
    path = Path(model.rstrip("/"))
    name = path.name if path.exists() else model.replace("/", "--")
    return Path("eval-results") / re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def evaluate_command(model: str, adapter: str | None, suites: list[str], out: str | None,
                     device: str | None, max_length: int | None = None, precision: str = "auto") -> None:
    """Load the model once, run every suite into ``out`` (``<out>/<suite>.json``, plots), print a summary."""
    for path in suites:
        load_suite(path)  # a bad suite fails before minutes of model loading
    from toolkit.model.loading import load_for_eval

    loaded, tokenizer, info = load_for_eval(model, adapter, device, precision)
    folder = Path(out) if out else default_out(model)
    write_json(folder / "eval_info.json", info)
    results = run_suites_into(loaded, tokenizer, suites, folder, tag=folder.name, model_name=model,
                              max_length=max_length)
    for suite, data in results.items():
        for key, entry in data["tasks"].items():
            print(f"{suite}/{key}: {headline(entry)}")
    if table := accuracy_table(results):
        print(f"\nneedle accuracy, 95% Wilson interval, n prompts ({info['dtype']}, {info['device']}):\n{table}\n")
    print(f"results in {folder}")
