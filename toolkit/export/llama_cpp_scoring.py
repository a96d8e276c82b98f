"""What the llama.cpp backend asks llama.cpp on a GGUF file: greedy exact match of answers, greedy continuations and
per-token losses, each call a batch of requests (:class:`toolkit.export.llama_cpp_backend.LlamaCppBackend`).

Run in a child process (:func:`toolkit.export.child_process.in_child`), so this module imports little: the child
loads it before anything else.
"""

from __future__ import annotations

import ctypes
import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

_LOSS_CHUNK = 256


_EXPECTED = b"possible training context overflow"
"""llama.cpp's warning at each load when the context is longer than the model was trained for: the evaluations ask
past it on purpose (a model's accuracy beyond its trained length is part of what they show)."""
_callbacks: list[Any] = []
"""The log callback handed to llama.cpp, kept alive as long as llama.cpp may call it."""


def _quiet_expected_warning(llama_cpp: Any) -> None:
    """llama.cpp's log through llama-cpp-python's own printer, less :data:`_EXPECTED` (printed at every load)."""
    if _callbacks:
        return
    printer = importlib.import_module("llama_cpp._logger").llama_log_callback

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: Any) -> None:
        if _EXPECTED not in text:
            printer(level, text, user_data)

    _callbacks.append(callback)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def load_llama(gguf: Path, n_ctx: int) -> Any:
    """llama.cpp's ``Llama`` on ``gguf``, a context of ``n_ctx``, logits kept at every position, a thread per core
    this process may use (llama-cpp-python's default is half the machine's cores)."""
    llama_cpp = importlib.import_module("llama_cpp")
    _quiet_expected_warning(llama_cpp)
    return llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                           verbose=False, n_threads=len(os.sched_getaffinity(0)))


def logits_at(llm: Any, ids: list[int]) -> np.ndarray:
    """The logits at every position of ``ids`` (a fresh sequence), copied: llama.cpp reuses its buffer."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)])


def greedy_matches(gguf: Path, n_ctx: int, cases: list[tuple[list[int], list[int]]]) -> list[bool]:
    """For each (prompt, answer): would greedy decoding after the prompt produce the answer? One teacher-forced pass
    each, as in :func:`toolkit.evals.scoring.greedy_matches`."""
    llm = load_llama(gguf, n_ctx)
    matches = []
    for prompt, answer in cases:
        logits = logits_at(llm, prompt + answer[:-1])[len(prompt) - 1:]
        matches.append(logits.argmax(-1).tolist() == answer)
    llm.close()
    return matches


def generate(gguf: Path, n_ctx: int, prompts: list[list[int]], max_new_tokens: int,
             eos_id: int | None) -> list[list[int]]:
    """Greedy continuations of at most ``max_new_tokens`` tokens, each ending at its first ``eos_id``."""
    llm = load_llama(gguf, n_ctx)
    rows = []
    for prompt in prompts:
        llm.reset()
        llm.eval(prompt)
        out: list[int] = []
        while len(out) < max_new_tokens and (not out or out[-1] != eos_id):
            if out:
                llm.eval(out[-1:])
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        rows.append(out)
    llm.close()
    return rows


def token_losses(gguf: Path, n_ctx: int, sequences: list[list[int]]) -> np.ndarray:
    """(batch, length - 1) float32 losses of sequences of one length: entry i is the loss of token i + 1."""
    llm = load_llama(gguf, n_ctx)
    out = []
    for ids in sequences:
        logits = logits_at(llm, ids[:-1])
        targets = np.asarray(ids[1:])
        losses = []
        for start in range(0, len(targets), _LOSS_CHUNK):
            chunk = logits[start:start + _LOSS_CHUNK].astype(np.float64)
            top = chunk.max(-1)
            log_norm = top + np.log(np.exp(chunk - top[:, None]).sum(-1))
            losses.append(log_norm - chunk[np.arange(len(chunk)), targets[start:start + _LOSS_CHUNK]])
        out.append(np.concatenate(losses))
    llm.close()
    return np.stack(out).astype(np.float32)
