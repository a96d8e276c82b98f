"""Helpers for tests that run the real CLI on the micro recipe."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from toolkit.cli import main


def train(recipe: Path, *overrides: str) -> int:
    return main(["train", str(recipe), *overrides])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    final = run_dir / "final"
    name = "adapter_model.safetensors" if (final / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(final / name)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)


class StopAfter:
    """A stop flag that turns on after ``n`` optimizer steps, as a SIGTERM would."""

    def __init__(self, n: int):
        self.checks, self.n = 0, n
        self.signum: int | None = None

    def __bool__(self) -> bool:
        self.checks += 1
        if self.checks >= self.n:
            self.signum = 15
        return self.signum is not None
