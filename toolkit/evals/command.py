"""``python -m toolkit eval --model M [--adapter A] --suite S ... [--out DIR] [--device D] [--max-length N]
[--precision P]``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import UserError
from toolkit.evals.accuracy_table import accuracy_table
from toolkit.evals.api import capped, results_file, run_suites_into
from toolkit.evals.registry import check_prompts, check_tasks, headline
from toolkit.evals.results import write_json
from toolkit.evals.run_results import check_entries
from toolkit.evals.suite import load_suites
from toolkit.file_reading import read_json_object
from toolkit.output_paths import check_writable
from toolkit.run_folder import RUN_INFO, read_suite


def default_out(model: str) -> Path:
    """``eval-results/<model name>``: a folder's name, or a hub id with ``/`` turned into ``--``. A folder inside a
    run folder is named with the run's name and the way down (``runs/a/final`` -> ``a-final``), so two runs' final
    models, each a folder named ``final``, do not write over each other's results."""
    path = Path(model.rstrip("/"))
    if path.exists():
        folder = Path(os.path.abspath(path))  # a link keeps its own name
        run = next((parent for parent in folder.parents if (parent / RUN_INFO).is_file()), None)
        name = "-".join(folder.relative_to(run.parent).parts) if run is not None else folder.name
    else:
        name = model.replace("/", "--")
    return Path("eval-results") / re.sub(r"[^A-Za-z0-9._-]+", "_", name)


EVAL_INFO = "eval_info.json"
"""Written into an eval folder before its results: the model and adapter they belong to, dtype and device."""


def _same(given: str | None, recorded: str | None) -> bool:
    """Whether two model or adapter names (None: no adapter) are the same: equal, or local paths of one folder."""
    if given is None or recorded is None:
        return given == recorded
    return given == recorded or (os.path.exists(given) and os.path.exists(recorded)
                                 and os.path.samefile(given, recorded))


def _described(model: str, adapter: str | None) -> str:
    return model if adapter is None else f"{model} with the adapter {adapter}"


def check_owner(folder: Path, model: str, adapter: str | None) -> None:
    """A UserError when ``folder``'s :data:`EVAL_INFO` names another model or adapter: its results would be credited to
    this one. The same model evaluated again resumes there (results of weights that changed are run again)."""
    if not (info_file := folder / EVAL_INFO).is_file():
        return
    info = read_json_object(info_file)
    owner, owner_adapter = str(info.get("model")), info.get("adapter")
    if _same(owner_adapter, owner):
        owner_adapter = None  # a LoRA run's final/ given as the model is its own adapter
    if not (_same(model, owner) and _same(adapter, owner_adapter)):
        raise UserError(f"--out: {folder} holds the results of {_described(owner, owner_adapter)} ({EVAL_INFO}), not "
                        f"of {_described(model, adapter)}; name another --out, or remove the folder first")


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` wrote into ``folder``."""

    folder: Path
    info: dict[str, Any]
    """:data:`EVAL_INFO`: the model, adapter, dtype and device evaluated."""
    results: dict[str, dict[str, Any]]
    """{suite name: the suite's results}, as in ``<folder>/<suite>.json``."""


def evaluate(model: str, suites: list[str], *, adapter: str | None = None, out: str | Path | None = None,
             device: str | None = None, max_length: int | None = None, precision: str = "auto") -> Evaluation:
    """Load ``model`` (a folder or hub id, with ``adapter``) once and run every suite into ``out`` (default
    :func:`default_out`): ``<out>/<suite>.json`` with plots. Every suite, its data and ``out`` (no other model's
    results) are checked first."""
    if max_length is not None and max_length < 1:
        raise UserError(f"--max-length: {max_length} is not a positive number of tokens")
    # a bad suite, or one left empty by --max-length, fails before minutes of model loading
    named = load_suites(suites, lambda _: "--suite")
    kept = [[kept for task in suite.tasks if (kept := capped(task, max_length))] for suite in named]
    for path, tasks in zip(suites, kept, strict=True):
        if not tasks:
            raise UserError(f"--max-length {max_length}: leaves out every prompt length of {path}")
        check_tasks(tasks)
    folder = Path(out) if out else default_out(model)
    check_writable(folder, "--out")
    check_owner(folder, model, adapter)
    for suite in named:
        if (taken := results_file(folder, suite.name)).is_dir():
            raise UserError(f"--out: {taken} is a folder; the results of suite {suite.name} are written to that file")
        read_suite(taken, check_entries)  # results recorded there are reused: a hand-edited one is refused now
    from toolkit.model.loading import chosen_device, eval_tokenizer, load_for_eval

    chosen_device(device)
    tokenizer = eval_tokenizer(model, adapter)
    for tasks in kept:
        check_prompts(tasks, tokenizer)
    loaded, tokenizer, info = load_for_eval(model, adapter, device, precision, tokenizer)
    write_json(folder / EVAL_INFO, info)
    results = run_suites_into(loaded, tokenizer, suites, folder, tag=folder.name, model_name=model,
                              max_length=max_length)
    return Evaluation(folder, info, results)


def print_summary(evaluation: Evaluation) -> None:
    """Each task's headline, the needle accuracy table, and where the results are."""
    for suite, data in evaluation.results.items():
        for key, entry in data["tasks"].items():
            print(f"{suite}/{key}: {headline(entry)}")
    if table := accuracy_table(evaluation.results):
        info = evaluation.info
        print(f"\nneedle accuracy, 95% Wilson interval, n prompts ({info['dtype']}, {info['device']}):\n{table}\n")
    print(f"results in {evaluation.folder}")
