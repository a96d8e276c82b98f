"""The verdict across runs (e.g. seeds) as one markdown table: ``python -m toolkit report --summary RUN [RUN ...]``,
which ``make summary`` calls."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from toolkit.errors import UserError
from toolkit.evals.run_results import read_run
from toolkit.evals.stats import COMPARISON_INTERVAL, Rate, common_n, length_text
from toolkit.formatting.blocks import markdown_table
from toolkit.report.verdict import Verdict, compute_verdict
from toolkit.run_folder import RUN_INFO, Run

log = logging.getLogger(__name__)


def _run_date(run: Run) -> str:
    """The day the run started (``run_info.json``), else the day that file or the folder was last written."""
    if run.info.started is not None:
        return run.info.started[:10]
    path = run.folder / RUN_INFO
    stamp = path.stat().st_mtime if path.is_file() else run.folder.stat().st_mtime
    return datetime.fromtimestamp(stamp, tz=UTC).date().isoformat()


def _distinct(folders: Sequence[Path]) -> list[Path]:
    """``folders``, each run once (by its resolved path, as first named), with a note for each named more than once."""
    named: dict[Path, list[Path]] = {}
    for folder in folders:
        named.setdefault(Path(folder).resolve(), []).append(Path(folder))
    for same in named.values():
        if len(same) > 1:
            log.warning("note: %s named %d times (%s); its rows are shown once", same[0], len(same),
                        ", ".join(map(str, same)))
    return [same[0] for same in named.values()]


def summary_markdown(folders: Sequence[Path]) -> str:
    """One markdown table of the verdict task across runs (e.g. seeds): a row per run and model, each folder once."""
    folders = _distinct(folders)
    runs = [read_run(Path(folder)) for folder in folders]
    verdicts = [compute_verdict(run) for run in runs]
    first = verdicts[0].spec.model_dump()
    for run, verdict in zip(runs[1:], verdicts[1:], strict=True):
        for key, value in verdict.spec.model_dump().items():
            if value != first[key]:
                raise UserError(f"--summary: eval.verdict.{key} is {value} in {run.folder} but {first[key]} in "
                                f"{runs[0].folder}; one table takes runs of one verdict")
    rows: list[tuple[Run, Verdict, str, dict[int, Rate]]] = []
    for run, verdict in zip(runs, verdicts, strict=True):
        rows.append((run, verdict, f"before extension ({verdict.reference})", verdict.before))
        rows.append((run, verdict, f"after extension ({verdict.final})", verdict.after))
    lengths = sorted({length for *_, rates in rows for length in rates})
    n = common_n(rates for *_, rates in rows)
    marks = {v.native_length: "native" for v in verdicts}
    marks |= {v.extended_length: f"{v.extended_length / v.native_length:g}x" for v in verdicts}
    header = ["run", "seed", "model", *(f"{k} ({marks[k]})" if k in marks else str(k) for k in lengths),
              "effective length", "retention", "verdict"]
    body = []
    for run, verdict, model, rates in rows:
        after = model.startswith("after")
        effective = verdict.effective_after if after else verdict.effective_before
        body.append([run.folder.name, str(run.recipe.seed if run.recipe else "-"), model,
                      *(rates[k].format(with_n=n is None) if k in rates else "-" for k in lengths),
                      length_text(effective), verdict.retention_text() if after else "",
                      ("PASS" if verdict.passed else "FAIL") if after else ""])
    spec = verdicts[0].spec
    tasks = sorted({v.spec.task for v in verdicts})
    n_text = f"n={n} prompts per length" if n is not None else "n per cell"
    caption = (f"Needle accuracy on {', '.join(tasks)} with 95% Wilson intervals, {n_text}. Effective length: the "
               f"longest length whose accuracy, and every shorter length's, is at least {spec.effective_threshold:g}. "
               f"Retention: score of the final model / the model before extension on "
               f"{', '.join(spec.retention_suites)} (bar {spec.retention_min:g}, on the ratio itself). "
               f"{COMPARISON_INTERVAL} Verdict: native accuracy >= "
               f"{spec.native_min:g}, extended accuracy >= {spec.extended_min:g}"
               + ("" if spec.extended_before_max is None else
                  f", extended accuracy before extension <= {spec.extended_before_max:g}")
               + f", retention >= {spec.retention_min:g}.")
    devices = list(dict.fromkeys(run.info.device or "unknown device" for run in runs))
    dates = sorted({_run_date(run) for run in runs})
    command = "python -m toolkit report --summary " + " ".join(shlex.quote(str(f)) for f in folders)
    commits = list(dict.fromkeys(run.info.commit_text for run in runs))
    footer = (f"Machine: {'; '.join(devices)}. Toolkit commit: {', '.join(commits)}. Runs dated {dates[0]}"
              f"{f' to {dates[-1]}' if len(dates) > 1 else ''}. Table: `{command}`.")
    return "\n".join([caption, "", markdown_table(header, body), "", footer]) + "\n"

