"""A run's needle grids scored in llama.cpp on its exported GGUF file, beside transformers' scores of the same model.

Every ``niah`` task of the run's suites is asked again with the very same prompts (``toolkit.evals.niah``) and
scored the same way (teacher-forced greedy exact match of the asked value), with llama.cpp computing the logits.
The results become one more suite of the run's final evaluation, ``<suite>@llama.cpp-<outtype>``
(``eval/<final tag>/<suite>@llama.cpp-<outtype>.json``), so the report shows both runtimes' grids and
accuracies. Needs ``llama-cpp-python`` (``make llama-cpp``); llama.cpp runs in a child process
(:mod:`toolkit.export.llama_cpp_scoring`), one per task, so that a crash there ends the check with one line.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from transformers import AutoTokenizer

from toolkit.data.needle import ChatFrame
from toolkit.errors import UserError
from toolkit.evals.context import sentence_tokens
from toolkit.evals.niah import Cell, NiahTask, grid_summary, needle_prompt, pending_cells
from toolkit.evals.results import SuiteResults
from toolkit.evals.sources import load_sentences
from toolkit.evals.suite import load_suite
from toolkit.export.child_process import in_child
from toolkit.export.llama_cpp_scoring import greedy_matches
from toolkit.file_digest import sha256_of
from toolkit.run_folder import FINAL, eval_dir, load_run

log = logging.getLogger(__name__)


def score_needles_in_llama_cpp(run_dir: Path, gguf: Path, outtype: str) -> list[Path]:
    """Score every niah task of the run's suites on ``gguf`` in llama.cpp; the results files written."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise UserError("export --check: llama-cpp-python is not installed (make llama-cpp)")
    run = load_run(run_dir)
    recipe, final = run.typed_recipe, run.final
    if recipe is None or final is None:
        raise UserError(f"export --check: {run_dir} has no evaluations to compare with (a run folder is needed)")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / FINAL)
    tokens = sentence_tokens(tokenizer)
    fingerprint, written = "gguf:" + sha256_of(gguf)[:16], []
    for suite in map(load_suite, recipe.eval.suites):
        tasks = [task for task in suite.tasks if isinstance(task, NiahTask)]
        if not tasks:
            continue
        name = f"{suite.name}@llama.cpp-{outtype}"
        results = SuiteResults(eval_dir(run_dir, final) / f"{name}.json", name, final, gguf.name, fingerprint)
        for task in tasks:
            chat = ChatFrame.of(tokenizer) if task.chat else None
            sentences = load_sentences(task.haystack)
            keys = pending_cells(task, [])
            stacks = [needle_prompt(task, tokens, chat, sentences, *key) for key in keys]
            label = f"{name}/{task.key}"
            correct = in_child(greedy_matches, gguf, max(task.lengths) + 2 * task.digits + 8,
                               [(stack.input_ids, stack.answer_ids) for stack in stacks], label,
                               doing=f"scoring {label} on {gguf}")
            cells: list[Cell] = [
                {"length": length, "depth": depth, "sample": sample, "tokens": len(stack.input_ids), "correct": right}
                for (length, depth, sample), stack, right in zip(keys, stacks, correct, strict=True)]
            results.record(task, cells, grid_summary(cells, task.lengths, task.depths))
        results.finish({task.key for task in tasks})
        written.append(results.path)
        log.info("llama.cpp needle scores in %s", results.path)
    return written
