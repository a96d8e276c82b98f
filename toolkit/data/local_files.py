"""Local data files (``source: jsonl | csv | parquet | text``): which files a source names, one reader per format
that yields each record with where it came from (``file:line`` for JSONL and CSV), which errors about bad rows name
(a JSONL line that does not parse is a row without a record, a bad row :func:`unparsable` names), and what is read
of them without a tokenizer (a source's first record, which ``validate`` and ``train`` check before the tokenizer
loads).
The formats table (:data:`FORMATS`) is the one list of local formats; the recipe loader and the data checks read it.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from toolkit.data.corpus import missing_file_hint
from toolkit.errors import UserError, reason
from toolkit.recipe.data_spec import TRAIN_DATA, SourceSpec


def source_path(spec: SourceSpec) -> str:
    """``spec.path``, which the schema requires of every source but synthetic."""
    assert spec.path is not None, f"the schema gives source {spec.source!r} a path"
    return spec.path


def data_files(spec: SourceSpec, label: str = TRAIN_DATA) -> list[str]:
    """The files of a local source: ``spec.path`` itself, or every matching file below that folder."""
    path = Path(os.path.expanduser(source_path(spec)))
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        where = "" if path.is_absolute() else f" (a relative path is read beside the recipe, else in {Path.cwd()})"
        raise UserError(f"{label}.path: no such file: {spec.path}{missing_file_hint(path) or where}")
    suffixes = FORMATS[spec.source].suffixes
    files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))
    if not files:
        raise UserError(f"{label}.path: no {'/'.join(suffixes)} files in {spec.path}")
    return files


def first_row(spec: SourceSpec, label: str = TRAIN_DATA) -> dict[str, Any]:
    """The first ``{"record", "where"}`` row of a local source (its first file that has a record), read in the
    source's file format without a tokenizer (a UserError naming ``label`` for a source without files or records, or
    a file that cannot be read before it; a first line that does not parse is its row, :func:`unparsable`); whether
    records make documents is
    :func:`toolkit.data.sources.check_source`'s, with the tokenizer. Only that much is read: a text file, or a
    ``.json`` array, is read whole, and a folder may hold a whole corpus of them (``train`` checks it on every
    process)."""
    row = next(FORMATS[spec.source].reader(data_files(spec, label), f"{label}.path"), None)
    if row is None:
        raise UserError(f"{label}.path: no records in {spec.path}")
    return row


UNREADABLE = (OSError, ValueError, EOFError, zlib.error, csv.Error)
"""What a file that cannot be read raises: missing or a folder, not UTF-8, not gzip, a gzip file cut short (EOFError)
or damaged (zlib.error), a ``.json`` array or CSV that does not parse, Parquet pyarrow cannot read (ArrowInvalid, a
ValueError). A JSONL line that does not parse is no such error but a row (:func:`unparsable`)."""

_UNPARSABLE = "unparsable"
"""The key of a row whose line does not parse (its ``record`` None): the one line naming file and line."""


def unparsable(row: dict[str, Any]) -> str | None:
    """The one line naming the file and line of a row whose line does not parse (``bad_rows: error`` stops with it,
    ``skip`` counts it); None for a row that holds a record."""
    return row.get(_UNPARSABLE)


def _open(file: str) -> IO[str]:
    return gzip.open(file, "rt", encoding="utf-8") if file.endswith(".gz") else open(file, encoding="utf-8")


def _jsonl_rows(files: list[str], field: str) -> Iterator[dict[str, Any]]:
    """One row per non-blank line (one that does not parse: :func:`unparsable`); a ``.json`` file holding one array
    gives one record per element."""
    for file in files:
        try:
            yield from _jsonl_file(file, field)
        except UNREADABLE as exc:
            raise UserError(f"{field}: cannot read {file}: {reason(exc)}") from None


def _jsonl_file(file: str, field: str) -> Iterator[dict[str, Any]]:
    """A JSONL file's records, a line each; a ``.json`` file holds one array of them, one object (written over many
    lines, say), or one a line."""
    with _open(file) as handle:
        text = handle.read() if file.endswith((".json", ".json.gz")) else None
        if text is not None and text.lstrip().startswith("["):
            for i, value in enumerate(json.loads(text)):
                yield {"record": value, "where": f"{file}[{i}]"}
            return
        if text is not None and text.lstrip().startswith("{") and (whole := _one_object(text)) is not None:
            yield {"record": whole, "where": file}
            return
        lines = text.splitlines() if text is not None else handle
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield _line_row(line, file, number, field)


def _line_row(line: str, file: str, number: int, field: str) -> dict[str, Any]:
    """Line ``number`` of ``file`` as a row: its record, or none and the line naming it (:func:`unparsable`)."""
    where = f"{file}:{number}"
    try:
        return {"record": json.loads(line), "where": where}
    except ValueError as exc:
        why = f"{field}: cannot read {file}: line {number}: {reason(exc)}"
        return {"record": None, "where": where, _UNPARSABLE: why}


def _one_object(text: str) -> dict[str, Any] | None:
    """``text`` as one JSON object; None when it is not one (records a line each)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _csv_rows(files: list[str], field: str) -> Iterator[dict[str, Any]]:
    """One record per row, keyed by the header; ``where`` is the line the row starts on (quoted fields may span
    lines)."""
    csv.field_size_limit(sys.maxsize)
    for file in files:
        try:
            with _open(file) as handle:
                reader = csv.DictReader(handle)
                if reader.fieldnames is None:  # reads the header; None for an empty file
                    continue
                line = reader.line_num + 1
                for value in reader:
                    yield {"record": value, "where": f"{file}:{line}"}
                    line = reader.line_num + 1
        except UNREADABLE as exc:
            raise UserError(f"{field}: cannot read {file}: {reason(exc)}") from None


PARQUET_BATCH_ROWS = 64
"""Rows a Parquet file is read by: long documents are megabytes each (pyarrow's default, 65,536 rows, would hold
gigabytes of them in Python at once, to check the first record or resume a stream)."""


def _parquet_rows(files: list[str], field: str) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as parquet

    for file in files:
        try:
            table = parquet.ParquetFile(file)
            number = 0
            for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                for value in batch.to_pylist():
                    number += 1
                    yield {"record": value, "where": f"{file} row {number}"}
        except UNREADABLE as exc:
            raise UserError(f"{field}: cannot read {file}: {reason(exc)}") from None


def _text_rows(files: list[str], field: str) -> Iterator[dict[str, Any]]:
    """A text file is one document (books, code files)."""
    for file in files:
        try:
            yield {"record": {"text": Path(file).read_text(encoding="utf-8")}, "where": file}
        except UNREADABLE as exc:
            raise UserError(f"{field}: cannot read {file}: {reason(exc)}") from None


@dataclass(frozen=True)
class LocalFormat:
    """A local file format: the file names it reads below a folder, and its reader of ``(files, field)`` that yields
    ``{"record", "where"}`` rows (a file it cannot read: a UserError naming ``field``, e.g. ``train.data.path``; a
    JSONL line that does not parse: a row :func:`unparsable` names)."""

    suffixes: tuple[str, ...]
    reader: Callable[[list[str], str], Iterator[dict[str, Any]]]


FORMATS = {"jsonl": LocalFormat((".jsonl", ".json", ".jsonl.gz", ".json.gz"), _jsonl_rows),
           "csv": LocalFormat((".csv", ".csv.gz"), _csv_rows),
           "parquet": LocalFormat((".parquet",), _parquet_rows),
           "text": LocalFormat((".txt", ".md"), _text_rows)}
LOCAL_FORMATS = frozenset(FORMATS)
"""The ``source`` values read from local files (the schema's others: ``synthetic``, ``hub``)."""
