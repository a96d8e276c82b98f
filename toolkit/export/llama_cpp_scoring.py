"""The llama.cpp side of ``export --check``: greedy exact match of needle answers on a GGUF file.

Run in a child process (:func:`toolkit.export.child_process.in_child`), so this module imports little: the child
loads it before anything else.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm


def _llama(gguf: Path, n_ctx: int) -> Any:
    return importlib.import_module("llama_cpp").Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=n_ctx,
                                                      n_ubatch=n_ctx, logits_all=True, verbose=False)


def greedy_matches(gguf: Path, n_ctx: int, cases: list[tuple[list[int], list[int]]], desc: str) -> list[bool]:
    """For each (prompt, answer): would greedy decoding after the prompt produce the answer? One teacher-forced pass
    each, as in :func:`toolkit.evals.scoring.greedy_matches`."""
    llm = _llama(gguf, n_ctx)
    matches = []
    for prompt, answer in tqdm(cases, desc=desc, unit="prompt"):
        llm.reset()
        llm.eval(prompt + answer[:-1])
        logits = np.asarray(llm.scores[len(prompt) - 1:len(prompt) - 1 + len(answer)])
        matches.append(logits.argmax(-1).tolist() == answer)
    llm.close()
    return matches
