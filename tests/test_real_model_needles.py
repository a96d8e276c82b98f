"""Needle prompts on a real BPE tokenizer and chat template (SmolLM2-135M-Instruct): exact placement, answers
that tokenise as in running text, chat framing identical to the model's own template, and real retrieval."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.real_model import SMALL_MODEL, needs_small_model
from toolkit.cli import main
from toolkit.data.needle import ChatFrame, SentenceTokens, build_haystack, make_needles
from toolkit.evals.scoring import greedy_matches

pytestmark = needs_small_model

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(SMALL_MODEL)


def _stack(tokens: SentenceTokens, length: int, depth: float, chat: ChatFrame | None = None, needles: int = 1):
    rng = random.Random(f"{length}:{depth}")
    asked = make_needles(rng, needles)
    depths = [depth] + [rng.random() for _ in asked[1:]]
    return asked, build_haystack(tokens, length, asked, depths, asked[0], rng, chat=chat)


@pytest.mark.parametrize("depth", DEPTHS)
def test_needle_sits_at_its_depth_in_real_tokens(tokenizer, depth: float) -> None:
    tokens = SentenceTokens(tokenizer)
    assert tokens.bos == []  # SmolLM2's tokenizer puts nothing in front of a text (its bos opens chat turns)
    needles, stack = _stack(tokens, 2048, depth, needles=3)
    question = tokens(needles[0].question)
    assert 2048 - 40 < len(stack.input_ids) <= 2048  # filled to within one sentence of the length
    for needle, position in zip(needles, stack.needle_positions, strict=True):
        sentence = tokens(needle.sentence)
        assert tuple(stack.input_ids[position:position + len(sentence)]) == sentence
        assert tokenizer.decode(sentence) == needle.sentence
    filler = len(stack.input_ids) - len(question) - sum(len(tokens(n.sentence)) for n in needles)
    before = stack.needle_positions[0] - sum(len(tokens(n.sentence)) for n, p in
                                             zip(needles[1:], stack.needle_positions[1:], strict=True)
                                             if p < stack.needle_positions[0])
    assert abs(before - depth * filler) <= 20  # the nearest sentence boundary (filler sentences: ~11-17 tokens)


def test_answer_tokenises_as_in_running_text(tokenizer) -> None:
    """The expected answer ids are what the tokenizer makes of the question and answer written out together, so
    a model that would write the answer is scored correct (a leading-space digit run splits into ' ' + digits)."""
    tokens = SentenceTokens(tokenizer)
    for needle in make_needles(random.Random(0), 10, digits=7):
        joined = tokenizer(needle.question + needle.answer, add_special_tokens=False)["input_ids"]
        assert joined == [*tokens(needle.question), *tokens(needle.answer)]
        assert tokenizer.decode(tokens(needle.answer)) == f" {needle.value}"


def test_chat_prompt_is_the_models_own_template(tokenizer) -> None:
    tokens = SentenceTokens(tokenizer)
    frame = ChatFrame.of(tokenizer)
    needles, stack = _stack(tokens, 1024, 0.5, chat=frame)
    body = stack.input_ids[len(frame.head):len(stack.input_ids) - len(frame.turn) - len(tokens(needles[0].lead))]
    content = tokenizer.decode(body)
    assert content.endswith(needles[0].ask) and needles[0].sentence in content
    expected = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False) + needles[0].lead
    assert tokenizer.decode(stack.input_ids) == expected
    assert stack.input_ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert len(stack.input_ids) <= 1024


def test_tokenizer_without_chat_template_is_refused(tokenizer) -> None:
    tokenizer = AutoTokenizer.from_pretrained(SMALL_MODEL)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        ChatFrame.of(tokenizer)


def test_real_model_retrieves_chat_needles(tokenizer) -> None:
    """The pretrained model answers chat-formatted needles at 1K tokens (fp32; exact match of the value)."""
    model = AutoModelForCausalLM.from_pretrained(SMALL_MODEL, dtype=torch.float32).eval()
    tokens, frame = SentenceTokens(tokenizer), ChatFrame.of(tokenizer)
    stacks = [_stack(tokens, 1024, depth, chat=frame)[1] for depth in (0.0, 0.5, 1.0)]
    assert greedy_matches(model, [(s.input_ids, s.answer_ids) for s in stacks], tokenizer.pad_token_id) == [True] * 3


def test_eval_command_runs_a_chat_suite_and_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    suite = tmp_path / "chat.yaml"
    suite.write_text("name: chat\ntasks:\n  - {type: niah, name: passkey, chat: true, lengths: [512], "
                     "depths: [0.0, 1.0], samples: 1}\n")
    assert main(["eval", "--model", str(SMALL_MODEL), "--suite", str(suite), "--out", str(tmp_path / "out"),
                 "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "| chat/passkey | model's own | 1.00 [0.34, 1.00] n=2 |" in out
    assert (tmp_path / "out" / "chat-passkey.png").is_file()
