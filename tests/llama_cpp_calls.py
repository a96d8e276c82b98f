"""What the llama.cpp tests ask llama.cpp, each call a function for a child process
(:func:`toolkit.export.child_process.in_child`): this module imports only numpy, so the child starts fast."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np


def _llama(path: Path, n_ctx: int) -> Any:
    llama = importlib.import_module("llama_cpp").Llama
    return llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, n_threads=2,
                 verbose=False)


def _logits(llm: Any, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)])


def tokenize(path: Path, n_ctx: int, texts: list[tuple[str, bool, bool]]) -> list[list[int]]:
    """The token ids of each (text, add_bos, special)."""
    llm = _llama(path, n_ctx)
    ids = [llm.tokenize(text.encode(), add_bos=add_bos, special=special) for text, add_bos, special in texts]
    llm.close()
    return ids


def logits(path: Path, n_ctx: int, prompts: list[list[int]]) -> list[np.ndarray]:
    """The logits at every position of each prompt."""
    llm = _llama(path, n_ctx)
    out = [_logits(llm, ids) for ids in prompts]
    llm.close()
    return out


def greedy(path: Path, n_ctx: int, prompts: list[list[int]], steps: list[int]) -> list[list[int]]:
    """Greedy continuations (``steps`` tokens each), every step a full pass over prompt and continuation."""
    llm = _llama(path, n_ctx)
    answers = []
    for ids, count in zip(prompts, steps, strict=True):
        out: list[int] = []
        for _ in range(count):
            out.append(int(np.argmax(_logits(llm, ids + out)[-1])))
        answers.append(out)
    llm.close()
    return answers
