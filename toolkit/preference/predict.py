"""``python -m toolkit predict RUN --data test.csv --out submission.csv``: the Chatbot Arena competition's
submission from a run trained on ``format: arena`` data.

The run's ``final/`` model asks every comparison in both orders (:mod:`toolkit.evals.preference_model`), laid out and
cut as the run's recipe trained it (its arena source's ``label_tokens`` and ``truncate_tokens``, the final
tokenizer's chat template), and writes ``id,winner_model_a,winner_model_b,winner_tie`` with the two orders'
probabilities averaged (each row sums to 1). The file is written whole or not at all, and an existing one is replaced
only when it is an earlier submission (its first line is the submission's header); the ids of ``--data`` must be
unique.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from toolkit.data.arena import ArenaRow, read_arena
from toolkit.errors import UserError
from toolkit.evals.preference_model import Predictions, check_rows_fit, predict_rows
from toolkit.evals.preference_stats import CLASSES, swap_consistency
from toolkit.output_paths import atomic_file, check_writable
from toolkit.recipe.data_spec import SourceSpec
from toolkit.run_folder import FINAL, RECIPE, read_recipe, require_final

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """What ``predict`` wrote: the rows, where, and the predictions behind them."""

    out: Path
    ids: list[str]
    predictions: Predictions

    def summary(self) -> str:
        p = self.predictions
        return (f"{self.out}: {len(self.ids)} rows; {p.cut_inputs} of {p.inputs} inputs (both orders) cut to fit "
                f"({p.cut_tokens} tokens); swap consistency {swap_consistency(p.probs, p.swapped):.4f}")


def arena_source(run: Path) -> SourceSpec:
    """The arena source of the run's last stage (its label tokens and truncation are the model's input format)."""
    require_final(run)
    recipe = read_recipe(run)
    if recipe is None:
        raise UserError(f"{run / RECIPE}: not found")
    train = recipe.train
    sources = [spec for _, _, spec in train.stage_data(len(train.stages) - 1).sources() if spec.format == "arena"]
    if not sources:
        raise UserError(f"{run / RECIPE}: the run did not train on format: arena data; predict needs one that did")
    return sources[0]


SUBMISSION_COLUMNS = ("id", *CLASSES)
SUBMISSION_HEADER = ",".join(SUBMISSION_COLUMNS)
"""The first line of every submission ``predict`` writes: an existing ``--out`` that starts with it may be replaced."""


def _is_submission(path: Path) -> bool:
    """Whether the file at ``path`` starts with :data:`SUBMISSION_HEADER` (an earlier submission); a file that cannot
    be read is none."""
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as handle:
            return handle.readline(len(SUBMISSION_HEADER) + 3).rstrip("\r\n") == SUBMISSION_HEADER
    except OSError:
        return False


def _check_out(out: Path, data: Path | None = None) -> bool:
    """Whether ``out`` holds an earlier submission to replace; a UserError when it cannot or must not be written:
    its folder is missing or no folder, it is ``data`` itself, or it is an existing file that is no submission."""
    check_writable(out.parent, "--out")  # names a file where a folder should be
    if out.is_dir():
        raise UserError(f"--out: {out} is a folder; name a .csv file")
    if not out.parent.is_dir():
        raise UserError(f"--out: {out.parent} is no folder that exists; name a .csv file in one")
    if out.suffix.lower() != ".csv":
        raise UserError(f"--out: {out} would hold a CSV submission under another name; name a .csv file")
    if not out.exists():
        return False
    if data is not None and data.exists() and os.path.samefile(out, data):
        raise UserError(f"--out: {out} is the --data file; name another file for the submission")
    if not _is_submission(out):
        raise UserError(f"--out: {out} exists and is no submission (its first line is not {SUBMISSION_HEADER}); "
                        "name a new file, or remove it first")
    return True


def _unique_ids(rows: list[ArenaRow], label: str) -> None:
    """A UserError naming the first id given twice (a submission names each comparison once) and both its rows."""
    first: dict[str, ArenaRow] = {}
    for row in rows:
        if (earlier := first.setdefault(row.id, row)) is not row:
            raise UserError(f"{label}: id {row.id!r} is given twice, at {earlier.where} and {row.where}; a submission "
                            "names each comparison once")


def write_submission(out: Path, ids: list[str], probs: list[tuple[float, float, float]]) -> None:
    """``id`` and the three class probabilities per row, written to a temporary file then renamed over ``out`` (an
    earlier submission, said so; any other file is refused)."""
    if _check_out(out):
        log.info("replacing %s (an earlier submission)", out)
    with atomic_file(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SUBMISSION_COLUMNS)
        for id_, row in zip(ids, probs, strict=True):
            total = sum(row)
            writer.writerow([id_, *(f"{p / total:.6f}" for p in row)])


def predict(run: Path, data: Path, out: Path, batch_size: int = 8, device: str | None = None,
            max_tokens: int | None = None) -> Prediction:
    """Predict every comparison of ``data`` (the competition's test or train columns) with ``run``'s model."""
    from toolkit.model.loading import eval_tokenizer, load_for_eval

    _check_out(out, data)
    for flag, value in (("--batch-size", batch_size), ("--max-tokens", max_tokens)):
        if value is not None and value < 1:
            raise UserError(f"{flag}: {value} is not a positive number")
    spec = arena_source(run)
    rows, _ = read_arena(data, label="--data")
    _unique_ids(rows, "--data")
    limit = max_tokens or spec.truncate_tokens
    assert limit is not None  # the schema requires truncate_tokens of an arena source
    tokenizer = eval_tokenizer(str(run / FINAL), None)
    limit_field = "--max-tokens" if max_tokens else f"{run / RECIPE}: truncate_tokens"
    check_rows_fit(rows, tokenizer, spec.label_tokens, limit, (f"{run / RECIPE}: label_tokens", limit_field))
    model, tokenizer, _ = load_for_eval(str(run / FINAL), None, device, tokenizer=tokenizer)
    predictions = predict_rows(model, tokenizer, rows, spec.label_tokens, limit, batch_size,
                               desc=f"predict {data.name}")
    ids = [row.id for row in rows]
    write_submission(out, ids, predictions.averaged)
    return Prediction(out, ids, predictions)
