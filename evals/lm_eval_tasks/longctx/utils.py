"""Loads this folder's JSONL data from next to the task YAMLs, so the tasks work from any directory.

Regenerate the data with ``python -m toolkit.evals.lmeval_data``.
"""

import json
from pathlib import Path

import datasets


def load_jsonl(data_file: str, **_metadata) -> dict:
    """``custom_dataset`` hook: {"test": Dataset} from ``data_file`` (relative to this folder)."""
    path = Path(__file__).parent / data_file
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}
