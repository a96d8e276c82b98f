"""What the llama.cpp tests ask llama.cpp beyond the backend's requests (tokens, raw logits, greedy decoding by full
passes), each call a function for a child process (:func:`toolkit.export.child_process.in_child`), on the backend's own
loader: this module imports only numpy and that loader, so the child starts fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.export.llama_cpp_scoring import load_llama, logits_at


def tokenize(path: Path, n_ctx: int, texts: list[tuple[str, bool, bool]]) -> list[list[int]]:
    """The token ids of each (text, add_bos, special)."""
    llm = load_llama(path, n_ctx)
    ids = [llm.tokenize(text.encode(), add_bos=add_bos, special=special) for text, add_bos, special in texts]
    llm.close()
    return ids


def logits(path: Path, n_ctx: int, prompts: list[list[int]]) -> list[np.ndarray]:
    """The logits at every position of each prompt."""
    llm = load_llama(path, n_ctx)
    out = [logits_at(llm, ids) for ids in prompts]
    llm.close()
    return out


def greedy(path: Path, n_ctx: int, prompts: list[list[int]], steps: list[int]) -> list[list[int]]:
    """Greedy continuations (``steps`` tokens each), every step a full pass over prompt and continuation."""
    llm = load_llama(path, n_ctx)
    answers = []
    for ids, count in zip(prompts, steps, strict=True):
        out: list[int] = []
        for _ in range(count):
            out.append(int(np.argmax(logits_at(llm, ids + out)[-1])))
        answers.append(out)
    llm.close()
    return answers
