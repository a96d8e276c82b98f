"""What ``validate`` checks of a recipe beyond its schema and suites, offline and without a model or a tokenizer:
that ``output.dir`` can be written (first, as ``train`` checks it; nothing is made) and that ``train`` may start
there (noting checkpoints it would resume or refuse), a local model or tokenizer folder, every local data source of
every stage and mixture (files of its format, the first record readable and read as its format's document reads it
before the tokenizer: the first file's only, as a text file or a JSON array is read whole), chat template files,
the eval suites' local judge folders. Names by hub id need the network and are left to ``train`` (the ok line lists
them); so is all that needs the tokenizer (records that make no document, sequence-length fit). Each check is its
owner's, which ``train`` runs too."""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.data.formats import BadRow, check_fields, named_chat_template
from toolkit.data.local_files import LOCAL_FORMATS, first_row, unparsable
from toolkit.errors import UserError
from toolkit.evals.suite import load_suites
from toolkit.hub.ids import looks_local
from toolkit.model.sources import check_model_source, tokenizer_source
from toolkit.output_paths import check_writable
from toolkit.recipe.data_spec import SourceSpec
from toolkit.recipe.schema import Recipe, TrainSpec
from toolkit.training.resume_point import CheckpointsHeld
from toolkit.training.resume_record import resume_from


@dataclass(frozen=True)
class Checked:
    """What ``validate`` says beside its ok line."""

    hub: list[str]
    """The hub ids left unchecked, each once, in the recipe's order."""
    note: str | None
    """What ``train`` does with the checkpoints ``output.dir`` holds (:func:`_start_note`); None when it holds none."""


def check_local_inputs(recipe: Recipe) -> Checked:
    """A :class:`UserError` naming the field of the first local input at fault (the module's list, in its order)."""
    check_writable(recipe.run_dir, "output.dir")
    note = _start_note(recipe)
    hub: list[str] = []
    model = recipe.model
    if model.name_or_path is not None:
        check_model_source(model.name_or_path, "model.name_or_path")
        if not looks_local(model.name_or_path):
            hub.append(model.name_or_path)
    tokenizer = tokenizer_source(model)
    if tokenizer is not None and not looks_local(tokenizer):
        hub.append(tokenizer)
    hub += check_local_data(recipe.train)
    hub += _local_judges(recipe)
    return Checked(list(dict.fromkeys(hub)), note)


def _start_note(recipe: Recipe) -> str | None:
    """Where ``train`` starts in ``output.dir`` (:func:`resume_from`, refusing what it refuses, the run's record
    included): a note when the folder holds checkpoints, which it continues with ``train.resume: true`` and refuses
    without (a finished run keeps its last checkpoints, and validating its recipe is no mistake)."""
    try:
        resume = resume_from(recipe)
    except CheckpointsHeld as held:
        return f"train would refuse to start: {held}"
    return None if resume is None else f"train resumes from {resume[0]} (train.resume: true)"


def check_local_data(train: TrainSpec) -> list[str]:
    """Every source of every stage and mixture without a tokenizer (``train`` checks them so before its tokenizer
    loads): its chat template file; a local source's files, its first record read and, unless bad rows are skipped,
    parsed and read as its format's document reads it (:func:`check_fields`: the line a run would stop at). Returns
    the hub datasets' ids."""
    hub: list[str] = []
    sources = {field: spec for index in range(len(train.stages)) for field, spec in train.stage_sources(index)}
    for field, spec in sources.items():
        named_chat_template(spec, field)
        if spec.source in LOCAL_FORMATS:
            _check_first_record(spec, field)
        elif spec.source == "hub" and spec.path is not None:
            hub.append(spec.path)
    return hub


def _check_first_record(spec: SourceSpec, field: str) -> None:
    """The source's first record read (:func:`first_row`: its first file's, not every file's); with
    ``bad_rows: error``, a line that does not parse (:func:`unparsable`) or a record its format's document cannot
    read (:func:`check_fields`) is the line a run would stop at."""
    row = first_row(spec, field)
    if spec.bad_rows == "skip":
        return
    line = unparsable(row)
    if line is not None:
        raise UserError(line)
    try:
        check_fields(row["record"], spec)
    except BadRow as bad:
        raise UserError(bad.line(field, row["where"])) from None


def _local_judges(recipe: Recipe) -> list[str]:
    """Each local judge (a jury task's, no ``url``) of the recipe's suites checked as ``check_panel`` checks its
    folder; returns the judges' hub ids."""
    hub: list[str] = []
    for path, suite in zip(recipe.eval.suites, load_suites(recipe.eval.suites, lambda i: f"eval.suites[{i}]"),
                           strict=True):
        for task in suite.tasks:
            for judge in getattr(task, "judges", ()):  # the jury types' panel
                if judge.url is None:
                    check_model_source(judge.model, f"{path}: {task.key}: judge {judge.name}: model")
                    hub += [] if looks_local(judge.model) else [judge.model]
    return hub
