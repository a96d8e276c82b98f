"""The runner's sharded-weights path (FSDP2, DeepSpeed ZeRO-3), run on one process: with ``shards_model`` forced on,
every in-run evaluation runs on a copy built from the gathered state dict (``toolkit.model.eval_copy``) and
``final/`` is saved from it; both must give exactly what the ordinary path gives."""

from __future__ import annotations

from pathlib import Path

import pytest

import toolkit.runner
from tests.runs import assert_same_scores, assert_same_weights, final_weights, needle_scores, needle_suite, train

SHORT = ("stages[0].max_steps=3", "stages[1].max_steps=2")
LORA = ("method.kind=lora", "method.lora.r=4")


@pytest.mark.slow
@pytest.mark.parametrize("method", [(), LORA], ids=["full", "lora"])
def test_sharded_path_evaluates_and_saves_like_the_model(method: tuple[str, ...], micro_recipe: Path,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = (f"eval.suites=[{needle_suite(tmp_path)}]", *SHORT, *method)
    assert train(micro_recipe, *overrides, f"output.dir={tmp_path / 'plain'}") == 0

    copies = []
    build = toolkit.runner.eval_copy

    def counted(*args, **kwargs):
        copies.append(args[1].keys())
        return build(*args, **kwargs)

    monkeypatch.setattr(toolkit.runner, "shards_model", lambda accelerator: True)
    monkeypatch.setattr(toolkit.runner, "eval_copy", counted)
    assert train(micro_recipe, *overrides, f"output.dir={tmp_path / 'sharded'}") == 0

    plain, sharded = needle_scores(tmp_path / "plain"), needle_scores(tmp_path / "sharded")
    assert len(copies) == len(sharded) == 3  # before, after stage 0, after stage 1
    assert_same_scores(sharded, plain, loss_atol=1e-6)
    assert_same_weights(final_weights(tmp_path / "sharded"), final_weights(tmp_path / "plain"))
