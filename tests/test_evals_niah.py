"""Needle grid: exact placement, teacher-forced scoring == greedy decoding, results JSON and resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.devices import DEVICES
from tests.test_evals_fixtures import Oracle, tiny_model, tiny_tokenizer
from toolkit.data import needle
from toolkit.evals.api import run_suites
from toolkit.evals.context import EvalContext
from toolkit.evals.haystack import load_sentences, split_sentences
from toolkit.evals.niah import NiahTask, needle_prompt
from toolkit.evals.scoring import generate_ids, greedy_matches
from toolkit.evals.specs import HaystackSpec
from toolkit.evals.transformers_backend import TransformersBackend

PNG = b"\x89PNG\r\n\x1a\n"


def _ctx(model, tmp_path: Path) -> EvalContext:
    return EvalContext(TransformersBackend(model, tiny_tokenizer()), tmp_path, "suite", "tiny")


def _longest_builtin_sentence(tokens) -> int:
    """Byte-level BPE never merges across spaces, so a filler sentence's length is the sum over its slots."""
    slot = lambda words: max(len(tokens(" " + w)) for w in words)  # noqa: E731
    return (len(tokens(" The")) + len(tokens(" the")) + 2 * slot(needle._ADJECTIVES) + 2 * slot(needle._NOUNS)
            + slot(needle._VERBS) + slot([t + "." for t in needle._TAILS]))


@pytest.mark.parametrize("source", ["builtin", "text"])
def test_needle_sits_at_requested_depth_in_tokens(tmp_path: Path, source: str):
    text = tmp_path / "essay.txt"
    text.write_text("The lamp was lit late. Rain fell on the roof!  Nobody came?\nThe dog slept by the door. " * 40)
    task = NiahTask(type="niah", lengths=[300, 700], haystack=HaystackSpec(source=source, path=str(text)))
    ctx = _ctx(tiny_model(), tmp_path)
    sentences = load_sentences(task.haystack)
    longest = (max(len(ctx.tokens(s)) for s in sentences) if sentences else _longest_builtin_sentence(ctx.tokens))
    for length in task.lengths:
        for depth in (0.0, 0.1, 0.33, 0.5, 0.9, 1.0):
            stack = needle_prompt(task, ctx.tokens, None, sentences, length, depth, sample=0)
            asked_key = re.search(r"pass key for (\w+)\?", tiny_tokenizer().decode(stack.input_ids))
            assert asked_key is not None
            key = asked_key.group(1)
            asked = needle.Needle(key, stack.answer.strip())
            needle_ids, question_ids = ctx.tokens(asked.sentence), ctx.tokens(asked.question)
            position = stack.needle_positions[0]
            assert tuple(stack.input_ids[position:position + len(needle_ids)]) == needle_ids
            assert tuple(stack.input_ids[-len(question_ids):]) == question_ids
            filler_total = len(stack.input_ids) - 1 - len(needle_ids) - len(question_ids)  # BOS first
            filler_before = position - 1
            assert abs(filler_before - depth * filler_total) <= longest / 2, (length, depth)
            assert length - longest < len(stack.input_ids) <= length


def test_split_sentences():
    assert split_sentences("One two.  Three?\nFour!") == [" One two.", " Three?", " Four!"]
    assert len(split_sentences(" ".join(["w"] * 100))) == 3  # run-on text is cut every 40 words


@pytest.mark.parametrize("device", DEVICES)
def test_teacher_forced_match_equals_greedy_generation(device: str):
    # fp32: bf16 near-ties could flip between the two paths; the ignore: transformers wraps .to in
    # functools.wraps(nn.Module.to), whose annotation hides the bound self from mypy
    model, tok = tiny_model().to(device), tiny_tokenizer()  # type: ignore[arg-type]
    prompts = [tok(text)["input_ids"] for text in
               (" The old river holds the quiet garden at dawn. The pass key for apple is",
                " The cold lake meets the tall tower.\nWhat is the pass key for raven? The pass key for raven is",
                " The pass key for amber is 12345. The slow road")]
    generated = generate_ids(model, prompts, max_new_tokens=4, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    assert all(1 <= len(g) <= 4 for g in generated)
    assert greedy_matches(model, list(zip(prompts, generated, strict=True)), tok.pad_token_id) == [True, True, True]
    wrong_last = [g[:-1] + [(g[-1] + 1) % len(tok)] for g in generated]
    wrong_first = [[(g[0] + 1) % len(tok)] + g[1:] for g in generated]
    for wrong in (wrong_last, wrong_first):
        assert greedy_matches(model, list(zip(prompts, wrong, strict=True)), tok.pad_token_id) == [False, False, False]
    # one row at a time (no padding) gives the same answers as the padded batch
    rows = zip(prompts, wrong_last, strict=True)
    assert [greedy_matches(model, [(p, g)], tok.pad_token_id)[0] for p, g in rows] == [False] * 3


def test_teacher_forced_offsets_with_padding():
    oracle = Oracle(vocab=50)
    rows = [([1, 2, 3], [4, 5]), ([1, 2, 3, 4, 5, 6, 7], [8]), ([9] * 5, [1, 2, 3])]
    assert greedy_matches(oracle, rows, pad_id=0) == [True, True, True]
    assert greedy_matches(Oracle(vocab=50, shift=2), rows, pad_id=0) == [False, False, False]


def _suite(tmp_path: Path, lengths: list[int], name: str = "grid") -> str:
    path = tmp_path / f"{name}-{len(lengths)}.yaml"
    path.write_text(f"name: {name}\ntasks:\n  - type: niah\n    name: keys\n    lengths: {lengths}\n"
                    "    depths: [0.0, 0.5, 1.0]\n    samples: 2\n    num_needles: 3\n    batch_tokens: 1024\n")
    return str(path)


def test_niah_results_json_and_heatmap(tmp_path: Path):
    oracle = Oracle(vocab=len(tiny_tokenizer()))
    out = run_suites(oracle, tiny_tokenizer(), [_suite(tmp_path, [128, 256])], tmp_path / "eval", "base", "oracle")
    saved = json.loads((tmp_path / "eval" / "base" / "grid.json").read_text())
    assert out["grid"] == saved
    assert (saved["suite"], saved["tag"], saved["model"]) == ("grid", "base", "oracle")
    entry = saved["tasks"]["keys"]
    assert entry["type"] == "niah" and entry["complete"] is True
    assert entry["grid"] == {"128": {"0.0": 1.0, "0.5": 1.0, "1.0": 1.0}, "256": {"0.0": 1.0, "0.5": 1.0, "1.0": 1.0}}
    assert entry["score"] == entry["mean"] == 1.0
    assert len(entry["cells"]) == 2 * 3 * 2
    assert all(c["tokens"] <= c["length"] for c in entry["cells"])
    assert oracle.calls == 1 + 2  # batch_tokens 1024: six 128-token rows in one forward, 256-token rows 4 at a time
    assert (tmp_path / "eval" / "base" / "grid-keys.png").read_bytes().startswith(PNG)


class ShortSighted(Oracle):
    """The oracle on rows up to ``limit`` tokens, wrong on longer ones: a model that lost its long context."""

    def __init__(self, vocab: int, limit: int):
        super().__init__(vocab)
        self.limit = limit

    def forward(self, input_ids: torch.Tensor, logits_to_keep: torch.Tensor, use_cache: bool = False):
        self.shift = 1 if input_ids.shape[1] <= self.limit else 2
        return super().forward(input_ids, logits_to_keep, use_cache)


def test_niah_grid_tells_lengths_apart(tmp_path: Path):
    model = ShortSighted(len(tiny_tokenizer()), limit=192)  # a 128-token prompt with its answer
    out = run_suites(model, tiny_tokenizer(), [_suite(tmp_path, [128, 256])], tmp_path, "base", "short-sighted")
    entry = out["grid"]["tasks"]["keys"]
    assert entry["grid"] == {"128": {"0.0": 1.0, "0.5": 1.0, "1.0": 1.0}, "256": {"0.0": 0.0, "0.5": 0.0, "1.0": 0.0}}
    assert entry["scores_by_length"] == {"128": 1.0, "256": 0.0} and entry["score"] == entry["mean"] == 0.5


def test_niah_random_model_scores_per_cell(tmp_path: Path):
    out = run_suites(tiny_model(), tiny_tokenizer(), [_suite(tmp_path, [128])], tmp_path, "t", "tiny")
    entry = out["grid"]["tasks"]["keys"]
    for depth, score in entry["grid"]["128"].items():
        hits = [c["correct"] for c in entry["cells"] if c["depth"] == float(depth)]
        assert score == sum(hits) / len(hits)


def test_resume_skips_recorded_cells(tmp_path: Path):
    oracle = Oracle(vocab=len(tiny_tokenizer()))
    suite = _suite(tmp_path, [128, 256])
    run_suites(oracle, tiny_tokenizer(), [suite], tmp_path, "base", "oracle")
    path = tmp_path / "base" / "grid.json"
    data = json.loads(path.read_text())
    data["tasks"]["keys"]["cells"] = [c for c in data["tasks"]["keys"]["cells"] if c["length"] == 128]
    data["tasks"]["keys"]["complete"] = False
    path.write_text(json.dumps(data))  # as if interrupted after the 128-token cells

    oracle.calls = 0
    out = run_suites(oracle, tiny_tokenizer(), [suite], tmp_path, "base", "oracle")
    assert oracle.calls == 2  # only the six 256-token prompts, 4 per forward
    assert len(out["grid"]["tasks"]["keys"]["cells"]) == 12

    oracle.calls = 0
    run_suites(oracle, tiny_tokenizer(), [_suite(tmp_path, [128, 256, 512])], tmp_path, "base", "oracle")
    assert oracle.calls == 3  # a new length: six 512-token prompts, two per forward

    with torch.no_grad():
        oracle.weight.add_(1.0)  # other weights: nothing is reused
    oracle.calls = 0
    run_suites(oracle, tiny_tokenizer(), [suite], tmp_path, "base", "oracle")
    assert oracle.calls == 3
