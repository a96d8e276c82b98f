"""The two backends agree on a tiny trained model (the micro recipe, YaRN x4 to 256 tokens), exported as f32 GGUF:
the same needle cells right and wrong, the same greedy continuations, the same per-token losses.

The micro model answers no needle after two training steps, so each cell is asked twice: with the needle's value
(wrong in both runtimes) and with transformers' own greedy continuation (right there by construction), which
llama.cpp must find right too. Each batch runs in one llama.cpp child process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.real_model import needs_converter, needs_llama_cpp
from toolkit.evals.backend import AnswerRequest
from toolkit.evals.context import sentence_tokens
from toolkit.evals.niah import NiahTask, needle_prompt
from toolkit.evals.scoring import generate_ids
from toolkit.evals.transformers_backend import TransformersBackend
from toolkit.export.llama_cpp_backend import LlamaCppBackend
from toolkit.export.llama_cpp_needles import needle_context

pytestmark = [needs_converter, needs_llama_cpp]

TASK = NiahTask(type="niah", lengths=[64, 128, 256], depths=[0.0, 0.5, 1.0], samples=2)


@pytest.fixture(scope="module")
def backends(export_run: Path, micro_gguf) -> tuple[TransformersBackend, LlamaCppBackend]:
    tokenizer = AutoTokenizer.from_pretrained(export_run / "final")
    model = AutoModelForCausalLM.from_pretrained(export_run / "final", dtype=torch.float32).eval()
    gguf = micro_gguf("f32").path
    return TransformersBackend(model, tokenizer), LlamaCppBackend(gguf, needle_context([TASK]), tokenizer)


def test_both_backends_score_the_needle_cells_alike(backends: tuple[TransformersBackend, LlamaCppBackend]) -> None:
    hf, cpp = backends
    tokens = sentence_tokens(hf.tokenizer)
    stacks = [needle_prompt(TASK, tokens, None, None, length, depth, sample) for length in TASK.lengths
              for depth in TASK.depths for sample in range(TASK.samples)]
    own = [generate_ids(hf.model, [h.input_ids], len(h.answer_ids), hf.pad_id)[0] for h in stacks]
    requests = [AnswerRequest(h.input_ids, answer) for h, mine in zip(stacks, own, strict=True)
                for answer in (h.answer_ids, mine)]
    theirs = hf.greedy_matches(requests)
    assert theirs == [False, True] * len(stacks)
    assert cpp.greedy_matches(requests) == theirs


def test_both_backends_continue_alike(backends: tuple[TransformersBackend, LlamaCppBackend]) -> None:
    hf, cpp = backends
    prompts = [needle_prompt(TASK, sentence_tokens(hf.tokenizer), None, None, length, 0.5, 0).input_ids
               for length in TASK.lengths]
    texts = hf.generate(prompts, 6)
    assert all(texts) and cpp.generate(prompts, 6) == texts


def test_both_backends_give_the_same_token_losses(backends: tuple[TransformersBackend, LlamaCppBackend]) -> None:
    hf, cpp = backends
    sequences = [needle_prompt(TASK, sentence_tokens(hf.tokenizer), None, None, 256, depth, 0).input_ids[:200]
                 for depth in (0.0, 1.0)]
    theirs, ours = hf.token_losses(sequences), cpp.token_losses(sequences)
    diff = (ours - theirs).abs().max().item()
    print(f"token losses: max |llama.cpp - transformers| {diff:.2e}, mean loss {theirs.mean().item():.4f}")
    assert ours.shape == theirs.shape == (2, 199) and ours.dtype == torch.float32
    assert diff < 1e-3


def test_a_context_past_the_trained_length_loads_without_llama_cpps_warning_each_time(micro_gguf, capfd) -> None:
    """The evaluations ask past the trained length on purpose; llama.cpp's warning at every load is left out, its
    other messages are not."""
    from toolkit.export import llama_cpp_scoring
    from toolkit.export.llama_cpp_scoring import load_llama

    gguf = micro_gguf("f32").path
    for _ in range(2):
        load_llama(gguf, 4 * 256)  # the micro run is trained to 256 tokens
    assert "training context overflow" not in capfd.readouterr().err
    [callback] = llama_cpp_scoring._callbacks  # what llama.cpp calls with each message, installed once
    callback(3, b"llama_context: something else went wrong\n", None)
    assert capfd.readouterr().err == "llama_context: something else went wrong\n"
