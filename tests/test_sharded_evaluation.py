"""The runner's sharded-weights path (FSDP2, DeepSpeed ZeRO-3), run on one process: with ``_sharded`` forced on,
every in-run evaluation runs on a copy built from the gathered state dict (``toolkit.eval_copy``) and ``final/`` is
saved from it; both must give exactly what the ordinary path gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import toolkit.runner
from tests.runs import assert_same_weights, final_weights, train

SHORT = ("stages[0].max_steps=3", "stages[1].max_steps=2")
LORA = ("method.kind=lora", "method.lora.r=4")


def _scores(run: Path) -> dict[str, dict]:
    """Each evaluation's task scores by tag."""
    return {folder.name: {task: result["scores_by_length"]
                          for task, result in json.loads((folder / "needles.json").read_text())["tasks"].items()}
            for folder in sorted((run / "eval").iterdir())}


@pytest.mark.slow
@pytest.mark.parametrize("method", [(), LORA], ids=["full", "lora"])
def test_sharded_path_evaluates_and_saves_like_the_model(method: tuple[str, ...], micro_recipe: Path,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suite = tmp_path / "needles.yaml"
    suite.write_text("name: needles\ntasks:\n  - {type: niah, name: passkey, lengths: [64, 128], "
                     "depths: [0.0, 1.0], samples: 2}\n")
    overrides = (f"eval.suites=[{suite}]", *SHORT, *method)
    assert train(micro_recipe, *overrides, f"output.dir={tmp_path / 'plain'}") == 0

    copies = []
    build = toolkit.runner.eval_copy

    def counted(*args, **kwargs):
        copies.append(args[1].keys())
        return build(*args, **kwargs)

    monkeypatch.setattr(toolkit.runner, "_sharded", lambda accelerator: True)
    monkeypatch.setattr(toolkit.runner, "eval_copy", counted)
    assert train(micro_recipe, *overrides, f"output.dir={tmp_path / 'sharded'}") == 0

    plain, sharded = _scores(tmp_path / "plain"), _scores(tmp_path / "sharded")
    assert len(copies) == len(sharded) == 3  # before, after stage 0, after stage 1
    assert sharded == plain
    assert_same_weights(final_weights(tmp_path / "sharded"), final_weights(tmp_path / "plain"))
