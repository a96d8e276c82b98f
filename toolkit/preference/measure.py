"""``python -m toolkit.preference.measure``: train the small arena recipe, predict its held-out file in both orders,
and print what was measured as a Markdown table, one column per seed; each ``--doc`` file also gets the table
between its ``measured`` markers (the project's tables: ``--doc docs/preference.md --doc README.md``).

What it writes: the held-out log loss, accuracy and calibration against the class prior of the training file (the
run's ``preference`` evaluation), the submission's checks (rows, each summing to 1) and how far the submission for
the A/B-swapped file is from the swapped submission, the inputs cut to fit, and the wall times.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from toolkit.data.arena import read_arena, write_arena
from toolkit.environment import describe_device, source_commit
from toolkit.errors import UserError, command_parser, exit_on_user_error, seed_number
from toolkit.evals.preference import FIRST_ORDER, PRIOR, PreferenceTask
from toolkit.evals.preference_stats import BINS, unswapped
from toolkit.evals.run_results import read_run
from toolkit.evals.suite import load_suite
from toolkit.file_reading import read_text
from toolkit.formatting.blocks import markdown_table
from toolkit.formatting.numbers import score_with_interval
from toolkit.output_paths import check_writable, write_text
from toolkit.preference.predict import predict
from toolkit.recipe.loading import load_recipe
from toolkit.run_folder import NO_COMMIT
from toolkit.runner import run_recipe

BEGIN, END = "<!-- measured: begin -->", "<!-- measured: end -->"


def _task(suites: list[str]) -> tuple[str, PreferenceTask]:
    """The first preference task of the recipe's suites, with its suite's name."""
    for path in suites:
        suite = load_suite(path)
        for task in suite.tasks:
            if isinstance(task, PreferenceTask):
                return suite.name, task
    raise UserError("eval.suites: no preference task to measure")


def measure(recipe_path: Path, run_dir: Path, seed: int | None = None) -> dict[str, Any]:
    """Train, evaluate and predict (with the recipe's seed, or ``seed``); the figures for the doc."""
    recipe = load_recipe(recipe_path, [f"output.dir={run_dir}"] + ([f"seed={seed}"] if seed is not None else []))
    suite, task = _task(recipe.eval.suites)
    start = time.perf_counter()
    run_recipe(recipe)
    trained = time.perf_counter()
    first = predict(run_dir, Path(task.data), run_dir / "submission.csv")
    predicted = time.perf_counter()
    swapped_file = write_arena([row.swapped() for row in read_arena(task.data)[0]], run_dir / "test-swapped.csv")
    second = predict(run_dir, swapped_file, run_dir / "submission-swapped.csv")
    run = read_run(run_dir)
    entry = run.found(suite, task.key)[-1][1]
    return {"entry": entry, "train_s": trained - start, "predict_s": predicted - trained, "rows": len(first.ids),
            "sum_error": max(abs(sum(p) - 1) for p in first.predictions.averaged),
            "swap_gap": max(abs(a - b) for p, q in zip(first.predictions.averaged, second.predictions.averaged,
                                                        strict=True) for a, b in zip(p, unswapped(q), strict=True)),
            "recipe": str(recipe_path), "suite": f"{suite}/{task.key}", "threads": os.environ.get("OMP_NUM_THREADS"),
            "seed": recipe.seed, "machine": describe_device(torch.device("cpu")),
            "commit": source_commit() or NO_COMMIT, "date": datetime.now(UTC).date().isoformat()}


def _rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    """One seed's figures, by measure."""
    e = m["entry"]
    return [("held-out comparisons (n)", str(e["n"])),
            ("log loss, both orders averaged", score_with_interval(e, "log_loss")),
            ("log loss of the class prior " + f"({', '.join(f'{p:.3f}' for p in e['prior'])})",
             score_with_interval(e, PRIOR + "log_loss")),
            ("log loss, one order only", score_with_interval(e, FIRST_ORDER + "log_loss")),
            ("accuracy", score_with_interval(e, "accuracy")),
            ("accuracy of the prior", score_with_interval(e, PRIOR + "accuracy")),
            (f"expected calibration error ({BINS} bins)", f"{e['ece']:.3f}"),
            ("swap consistency of one pass (mean abs. difference)", f"{e['swap_consistency']:.4f}"),
            ("inputs cut to fit (both orders)", f"{e['truncated_inputs']} of {e['inputs']} ({e['tokens_cut']} tokens)"),
            ("submission rows; largest deviation of a row's sum from 1", f"{m['rows']}; {m['sum_error']:.1e}"),
            ("largest difference, swapped file's submission vs the submission swapped", f"{m['swap_gap']:.1e}"),
            ("wall time: train (with the held-out evaluation); predict",
             f"{m['train_s']:.0f} s; {m['predict_s']:.0f} s")]


def section(measured: list[dict[str, Any]]) -> str:
    """The figures of one or more seeds (one column each) as Markdown."""
    m = measured[0]
    columns = [_rows(each) for each in measured]
    table = markdown_table(["measure", *(f"seed {each['seed']}" for each in measured)],
                           [[name, *(rows[i][1] for rows in columns)] for i, (name, _) in enumerate(columns[0])])
    seeds = ("seeds " if len(measured) > 1 else "seed ") + ", ".join(str(each["seed"]) for each in measured)
    return (f"{BEGIN}\nMeasured by `python -m toolkit.preference.measure` ({m['recipe']}, {seeds}, "
            f"suite {m['suite']}) on {m['machine']}, OMP_NUM_THREADS={m['threads'] or 'unset'}, commit "
            f"{m['commit']}, {m['date']}; 95% intervals:\n\n"
            f"{table}\n{END}")


def _marked(doc: Path) -> str:
    """``doc``'s text; a UserError unless it is a text file holding both markers."""
    content = read_text(doc)
    if BEGIN not in content or END not in content:
        raise UserError(f"{doc}: no {BEGIN} ... {END} markers to write between")
    return content


def write_section(doc: Path, text: str) -> None:
    """Replace the part of ``doc`` between the markers with ``text``."""
    head, rest = _marked(doc).split(BEGIN, 1)
    write_text(doc, head + text + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__, "toolkit.preference.measure")
    parser.add_argument("--recipe", type=Path, default=Path("recipes/smollm2-135m-arena.yaml"),
                        help="the arena recipe to train (default: %(default)s)")
    parser.add_argument("--run", type=Path, default=Path("runs/smollm2-135m-arena"),
                        help="the run folder to train into, a new one (default: %(default)s)")
    parser.add_argument("--seeds", type=seed_number, nargs="+",
                        help="seeds to measure, one column each (default: the recipe's); with several, each run "
                             "goes to RUN-seedN")
    parser.add_argument("--doc", type=Path, action="append",
                        help="a file whose measured markers the table is written between (repeatable; default: "
                             "none, the table is only printed)")
    args = parser.parse_args(argv)
    docs = args.doc or []
    with exit_on_user_error():
        for doc in docs:  # every target checked before the minutes of training
            _marked(doc)
            check_writable(doc.parent, "--doc")
        seeds = args.seeds or [None]
        if len(set(seeds)) < len(seeds):
            raise UserError(f"--seeds: {' '.join(map(str, seeds))} names a seed twice")
        runs = [args.run if len(seeds) == 1 else args.run.with_name(f"{args.run.name}-seed{seed}") for seed in seeds]
        for run in runs:  # every run folder new, before the minutes of the first training
            if run.exists():
                raise UserError(f"--run: {run} exists; measure trains a new run (delete it, or give another --run)")
        text = section([measure(args.recipe, run, seed) for run, seed in zip(runs, seeds, strict=True)])
        print(text)  # before the documents are written: the figures are not lost if a write fails
        for doc in docs:
            write_section(doc, text)


if __name__ == "__main__":
    main()
