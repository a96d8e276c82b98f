"""``export --check``: a run's needle grids scored in llama.cpp on its exported GGUF file, beside transformers' scores
of the same model.

Every ``niah`` task of the run's suites is run again by ``niah``'s own runner with the llama.cpp backend
(:class:`toolkit.export.llama_cpp_backend.LlamaCppBackend`): the very same prompts, scored the same way (greedy exact
match of the asked value), llama.cpp computing the logits. The results become one more suite of the run's final
evaluation, ``<suite>@llama.cpp-<outtype>`` (``eval/<final tag>/<suite>@llama.cpp-<outtype>.json``), so the report
shows both runtimes' grids and accuracies. Needs ``llama-cpp-python`` (``make llama-cpp``).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from transformers import AutoTokenizer

from toolkit.errors import UserError
from toolkit.evals.api import results_file, run_tasks
from toolkit.evals.niah import NiahTask
from toolkit.evals.run_results import read_run
from toolkit.evals.suite import load_suite
from toolkit.export.llama_cpp_backend import LlamaCppBackend
from toolkit.run_folder import FINAL, eval_dir

log = logging.getLogger(__name__)


def needle_context(tasks: list[NiahTask]) -> int:
    """A context for the longest prompt of ``tasks`` and its answer (at most ``2 * digits + 8`` tokens)."""
    return max(max(task.lengths) + 2 * task.digits + 8 for task in tasks)


def needle_tasks(run_dir: Path) -> tuple[str, dict[str, list[NiahTask]]]:
    """The run's final evaluation tag and the niah tasks of its suites by suite name; a UserError when there is
    nothing to compare with or no llama.cpp to score in (checked before the export: ``export --check``)."""
    run = read_run(run_dir)  # checked as the report that follows the export reads it
    recipe, final = run.recipe, run.final
    if recipe is None or final is None:
        raise UserError(f"export --check: {run_dir} has no evaluations to compare with (a run folder is needed)")
    if importlib.util.find_spec("llama_cpp") is None:
        raise UserError("export --check: llama-cpp-python is not installed (make llama-cpp)")
    needles = {suite.name: [task for task in suite.tasks if isinstance(task, NiahTask)]
               for suite in map(load_suite, recipe.eval.suites)}
    return final, {name: tasks for name, tasks in needles.items() if tasks}


def score_needles_in_llama_cpp(run_dir: Path, gguf: Path, outtype: str,
                               found: tuple[str, dict[str, list[NiahTask]]]) -> list[Path]:
    """Score every niah task of the run's suites (``found``: :func:`needle_tasks`) on ``gguf`` in llama.cpp; the
    results files written."""
    final, needles = found
    if not needles:
        return []
    backend = LlamaCppBackend(gguf, needle_context([task for tasks in needles.values() for task in tasks]),
                              AutoTokenizer.from_pretrained(run_dir / FINAL))
    folder, written = eval_dir(run_dir, final), []
    for suite, tasks in needles.items():
        name = f"{suite}@llama.cpp-{outtype}"
        run_tasks(backend, tasks, folder, name, final, gguf.name)
        written.append(results_file(folder, name))
        log.info("llama.cpp needle scores in %s", written[-1])
    return written
