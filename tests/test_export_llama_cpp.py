"""The exported GGUF file in the real runtime: llama.cpp (llama-cpp-python built from source, ``make llama-cpp``)
loads it, tokenizes as our tokenizer does, gives transformers' next-token logits at 1x and 4x the native length
(the extended context, YaRN x4), and answers passkey prompts at 4x as transformers does.

Tolerance on logits: max |difference| over every position and token, with fp32 transformers as the reference, at
most ``RTOL[outtype]`` times the standard deviation of transformers' logits; and the greedy choice is the same at
every position where transformers' top two logits are further apart than that (an untrained model has near-ties).
Measured on the default run's final model (logit std about 4): f16 0.020 x std at 256 tokens and 0.011 at 1024;
q8_0 0.053 and 0.099; passkey at 1024 (8 prompts) 1.0 in both runtimes, the same answers.

Every llama.cpp call runs in a child process (``tests/llama_cpp_calls.py`` through
:func:`toolkit.export.child_process.in_child`): a crash in llama.cpp fails one test, not the whole pytest run.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests import llama_cpp_calls
from tests.real_model import SMALL_MODEL, english_documents, needs_converter, needs_llama_cpp, needs_small_model
from tests.test_export_gguf import FACTOR, NATIVE
from toolkit.data.needle import SentenceTokens, build_haystack, make_needles
from toolkit.data.tokenizer import BOS, EOS
from toolkit.export.child_process import in_child
from toolkit.export.to_gguf import export_gguf

pytestmark = [needs_converter, needs_llama_cpp]

T = TypeVar("T")
RTOL = {"f16": 0.05, "q8_0": 0.2}
DEFAULT_RUN = Path(__file__).resolve().parents[1] / "runs" / "tiny-passkey"

TEXTS = [
    " The quiet river holds the old tower at dawn. The pass key for apple is 40321.\nWhat is the pass key for apple?",
    "  leading spaces,\ttabs\t\tand\n\nnewlines   \n end",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
    "3 33 333 3333 33333 3.3 3..3 3...3 1,234,567.89 -42 +7e10 ０１２ ٣٤",
    "Unicode: café naïve Ελληνικά русский 日本語 한국어 ကာ 🚀🦙 ✅ 😶\u200d🌫️ “quotes” — dashes",
    "------======= ''''''```````\"\"\"\"......!!!!!!?????? \r\n\r\n\u00a0\u3000 trailing   ",
]


def _in_llama_cpp(call: Callable[..., T], path: Path, n_ctx: int, *args: Any) -> T:
    """``call`` of tests/llama_cpp_calls.py on the file ``path`` with a context of ``n_ctx``, in a child process."""
    return in_child(call, path, n_ctx, *args, doing=f"{call.__name__} on {path.name}")


def _hf_logits(model: Any, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _greedy(next_logits, ids: list[int], steps: int) -> list[int]:
    out: list[int] = []
    for _ in range(steps):
        out.append(int(np.argmax(next_logits(ids + out))))
    return out


def _prompts(tokenizer, length: int, count: int, seed: int = 0):
    rng = random.Random(seed)
    tokens = SentenceTokens(tokenizer)
    for i in range(count):
        needle = make_needles(rng, 1)[0]
        yield build_haystack(tokens, length, [needle], [(i + 0.5) / count], needle, rng)


class Exported:
    """A trained run's final model in transformers and, exported (``files``: f16 and q8_0), in llama.cpp."""

    def __init__(self, run: Path, files: dict[str, Path], native: int, factor: int):
        self.tokenizer = AutoTokenizer.from_pretrained(run / "final")
        self.model = AutoModelForCausalLM.from_pretrained(run / "final", dtype=torch.float32).eval()
        self.native, self.extended = native, native * factor
        self.files = files

    def llama_cpp(self, call: Callable[..., T], outtype: str, *args: Any) -> T:
        """``call`` of tests/llama_cpp_calls.py on the ``outtype`` file at the extended context."""
        return _in_llama_cpp(call, self.files[outtype], self.extended, *args)


@pytest.fixture(scope="module")
def micro(export_run: Path, micro_gguf) -> Exported:
    return Exported(export_run, {t: micro_gguf(t).path for t in RTOL}, NATIVE, FACTOR)


def _check_tokenization(exported: Exported) -> None:
    special = f"{BOS}x{EOS} y"
    *texts, specials = exported.llama_cpp(llama_cpp_calls.tokenize, "q8_0",
                                          [(text, True, False) for text in TEXTS] + [(special, False, True)])
    for text, ids in zip(TEXTS, texts, strict=True):
        assert ids == exported.tokenizer(text)["input_ids"], text
    assert specials == exported.tokenizer(special, add_special_tokens=False)["input_ids"]


def _assert_close_logits(theirs: np.ndarray, ours: np.ndarray, outtype: str, label: str) -> None:
    tolerance = RTOL[outtype] * float(ours.std())
    diff = float(np.abs(theirs - ours).max())
    same = theirs.argmax(-1) == ours.argmax(-1)
    top2 = np.sort(ours, axis=-1)[:, -2:]
    print(f"{label} {outtype}: max |diff| {diff:.4f} = {diff / ours.std():.4f} x std, argmax agreement "
          f"{same.mean():.4f}")
    assert diff <= tolerance, (label, outtype, diff, tolerance)
    assert same[top2[:, 1] - top2[:, 0] > tolerance].all(), (label, outtype, same.mean())


def _check_logits(exported: Exported, outtype: str) -> None:
    prompts = [next(_prompts(exported.tokenizer, length, 1, seed=length)).input_ids
               for length in (exported.native, exported.extended)]
    for prompt, theirs in zip(prompts, exported.llama_cpp(llama_cpp_calls.logits, outtype, prompts), strict=True):
        _assert_close_logits(theirs, _hf_logits(exported.model, prompt), outtype, f"{len(prompt)} tokens")


def _passkey(exported: Exported, count: int) -> tuple[float, float, float]:
    """Accuracy at 4x in transformers and in llama.cpp (f16), and the fraction of identical greedy answers."""
    haystacks = list(_prompts(exported.tokenizer, exported.extended - 8, count))
    answers = exported.llama_cpp(llama_cpp_calls.greedy, "f16", [haystack.input_ids for haystack in haystacks],
                                 [len(haystack.answer_ids) for haystack in haystacks])
    right = {"hf": 0, "llama.cpp": 0}
    same = 0
    for haystack, cpp in zip(haystacks, answers, strict=True):
        steps = len(haystack.answer_ids)
        hf = _greedy(lambda ids: _hf_logits(exported.model, ids)[-1], haystack.input_ids, steps)
        right["hf"] += hf == haystack.answer_ids
        right["llama.cpp"] += cpp == haystack.answer_ids
        same += hf == cpp
    print("passkey at", exported.extended, {k: v / count for k, v in right.items()}, "same answers", same / count)
    return right["hf"] / count, right["llama.cpp"] / count, same / count


def test_llama_cpp_tokenizes_as_our_tokenizer(micro: Exported) -> None:
    _check_tokenization(micro)


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_llama_cpp_logits_match_transformers_at_1x_and_4x(micro: Exported, outtype: str) -> None:
    _check_logits(micro, outtype)


def test_passkey_answers_at_4x_are_the_same_in_llama_cpp(micro: Exported) -> None:
    hf, cpp, same = _passkey(micro, count=6)
    assert same >= 5 / 6 and abs(hf - cpp) <= 1 / 6, (hf, cpp, same)


@pytest.mark.skipif(not (DEFAULT_RUN / "final" / "model.safetensors").is_file(),
                    reason="no final model of the default recipe in runs/tiny-passkey: run `make train`")
def test_the_default_runs_final_model_in_llama_cpp(tmp_path: Path) -> None:
    """The default recipe's model (256 tokens native, YaRN x4 to 1024): tokens, logits, passkey accuracy at 1024."""
    exported = Exported(DEFAULT_RUN, {t: export_gguf(DEFAULT_RUN, tmp_path / f"{t}.gguf", t) for t in RTOL}, 256, 4)
    _check_tokenization(exported)
    for outtype in ("f16", "q8_0"):
        _check_logits(exported, outtype)
    hf, cpp, same = _passkey(exported, count=8)
    assert same >= 7 / 8 and abs(hf - cpp) <= 1 / 8, (hf, cpp, same)


@needs_small_model
def test_the_real_small_model_with_yarn_in_llama_cpp(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct with its recipe's RoPE (YaRN x4, 8K -> 32K): llama.cpp tokenizes real English and the
    chat template as transformers does, and its logits on a 1K-token chat prompt match (f16)."""
    folder = tmp_path / "smollm2-yarn"
    folder.mkdir()
    for item in SMALL_MODEL.iterdir():
        if item.name != "config.json":
            (folder / item.name).symlink_to(item.resolve())
    config = json.loads((SMALL_MODEL / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 1e5, "factor": 4.0,
                                 "original_max_position_embeddings": 8192}
    config["max_position_embeddings"] = 32768
    (folder / "config.json").write_text(json.dumps(config))
    path = export_gguf(folder, tmp_path / "smollm2-f16.gguf", "f16")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    documents = english_documents()
    chat = str(tokenizer.apply_chat_template([{"role": "user", "content": documents[0][:4000]}],
                                             add_generation_prompt=True, tokenize=False))
    *texts, chat_ids = _in_llama_cpp(llama_cpp_calls.tokenize, path, 2048,
                                     [(document, True, False) for document in documents] + [(chat, False, True)])
    for document, ids in zip(documents, texts, strict=True):
        assert ids == tokenizer(document)["input_ids"], document[:80]
    ids = tokenizer(chat, add_special_tokens=False)["input_ids"][:1024]
    assert chat_ids[:1024] == ids
    [theirs] = _in_llama_cpp(llama_cpp_calls.logits, path, 2048, [ids])
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    _assert_close_logits(theirs, _hf_logits(model, ids), "f16", "SmolLM2 YaRN x4, 1K-token chat prompt")
