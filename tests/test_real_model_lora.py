"""LoRA on the real pretrained model, through the real CLI and the shipped recipe (SmolLM2-135M-Instruct on CPU):
the loss falls on real text, the merged weights reload with plain ``from_pretrained`` and give the adapter's
logits, and the saved config carries the recipe's RoPE."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.real_model import REPO, SMALL_MODEL, needs_small_model, write_jsonl
from tests.runs import metrics, train

pytestmark = [needs_small_model, pytest.mark.slow]

RECIPE = REPO / "recipes" / "smollm2-135m-yarn-32k-lora.yaml"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 32K recipe as a CPU smoke: 256-token rows of one real English text (Python's textwrap documentation,
    so the rows repeat and the loss can fall in a few steps), 8 steps in fp32, no evaluations. The last loss is
    0.56 of the first (seeds 0, 1, 2; at 512-token rows 0.44, at about twice the cost), asserted below 0.7."""
    folder = tmp_path_factory.mktemp("smollm2-lora")
    data = write_jsonl(folder / "text.jsonl", [inspect.getdoc(textwrap.TextWrapper) or ""] * 4)
    assert train(RECIPE, f"output.dir={folder / 'run'}", f"train.data={{source: jsonl, path: {data}}}",
                 "model.precision=fp32", "train.gradient_checkpointing=false", "train.max_steps=8",
                 "stages[0].seq_len=256", "stages[0].grad_accum=1", "stages[0].lr=1e-3", "stages[0].warmup_steps=0",
                 "eval.suites=[]", "eval.before=false", "eval.verdict=null", "logging.every=1") == 0
    return folder / "run"


def test_loss_falls_on_real_text(lora_run: Path) -> None:
    losses = [m["loss"] for m in metrics(lora_run) if "loss" in m]
    assert len(losses) == 8
    assert losses[-1] < 0.7 * losses[0], losses


def test_merged_weights_reload_plainly_with_the_adapters_logits(lora_run: Path) -> None:
    final = lora_run / "final"
    merged = AutoModelForCausalLM.from_pretrained(final / "merged", dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(SMALL_MODEL, dtype=torch.float32, rope_parameters=dict(
        merged.config.rope_parameters), max_position_embeddings=merged.config.max_position_embeddings)
    adapted = PeftModel.from_pretrained(base, final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final / "merged")
    ids = tokenizer("The TextWrapper instance has a number of attributes that control wrapping.",
                    return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = adapted(ids).logits
        torch.testing.assert_close(merged(ids).logits, logits, atol=2e-4, rtol=0)
        with adapted.disable_adapter():
            assert (logits - adapted(ids).logits).abs().max() > 1e-2  # the adapter did train


def test_saved_config_carries_the_recipes_rope(lora_run: Path) -> None:
    config = AutoModelForCausalLM.from_pretrained(lora_run / "final" / "merged").config
    assert config.rope_parameters["rope_type"] == "yarn"
    assert config.rope_parameters["factor"] == 4.0
    assert config.rope_parameters["original_max_position_embeddings"] == 8192
    assert config.rope_parameters["rope_theta"] == 100000.0  # the model's own theta kept
    assert config.max_position_embeddings == 32768
