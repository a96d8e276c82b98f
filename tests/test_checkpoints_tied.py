"""A model with tied input and output embeddings (the default recipe's, SmolLM2's) checkpoints and resumes
exactly: the shared weight is written once and read back into both places."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import MICRO_RECIPE, write_recipe
from tests.runs import StopAfter, assert_same_weights, final_weights, metrics, train

TIED = ("model.init_config.tie_word_embeddings=true", "train.save_every=2")


def test_tied_embeddings_resume_reproduces_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    import toolkit.runner

    reference = tmp_path / "reference"
    assert train(write_recipe(tmp_path, dict(MICRO_RECIPE, output={"dir": str(reference)}), "a.yaml"), *TIED) == 0
    saved = load_file(sorted((reference / "checkpoints").iterdir())[-1] / "model.safetensors")
    assert any(key.endswith("embed_tokens.weight") for key in saved)
    assert not any(key.endswith("lm_head.weight") for key in saved)  # held once, under the embedding's name

    @contextmanager
    def fake_signals():
        yield StopAfter(5)

    run = tmp_path / "run"
    recipe = write_recipe(tmp_path, dict(MICRO_RECIPE, output={"dir": str(run)}), "b.yaml")
    monkeypatch.setattr(toolkit.runner, "stop_on_signals", fake_signals)
    assert train(recipe, *TIED) == 143
    monkeypatch.undo()
    assert train(recipe, *TIED, "train.resume=true") == 0
    assert_same_weights(final_weights(run), final_weights(reference))
    assert [r["loss"] for r in metrics(run)] == pytest.approx([r["loss"] for r in metrics(reference)], abs=1e-6)
