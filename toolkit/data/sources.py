"""Documents of one source: real records (local JSONL, parquet or text files, or a hub dataset) or synthetic needles.

Records stream (nothing is loaded whole), are shuffled with a small seeded buffer that reshuffles every epoch
(``shuffle: false``: read in file order), and cycled forever; every process reads the same stream
(``toolkit.data.batches`` says who trains on what). Each record becomes a document by the source's ``format``
(:mod:`toolkit.data.formats`); documents outside ``min_tokens``/``max_tokens`` are dropped, and with
``upsample`` each document shorter than ``upsample.min_tokens`` is kept with probability ``1 / factor`` (seeded),
so long documents are drawn ``factor`` times as often relative to the rest of the source. A bad record (one its
format cannot read, or a JSONL line that does not parse) stops the run naming its file and line, or is skipped and
counted (``bad_rows: skip``). A stream starts from a :class:`toolkit.data.stream_state.SourceCursor` (a resumed
run's position) and keeps it up to date as it reads.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from itertools import islice
from typing import Any

from toolkit.data.formats import BadRow, chat_template, to_document
from toolkit.data.local_files import LOCAL_FORMATS, data_files, unparsable
from toolkit.data.packing import Document
from toolkit.data.records import record_dataset
from toolkit.data.stream_state import SourceCursor
from toolkit.data.synthetic import synthetic_documents
from toolkit.errors import UserError, reason
from toolkit.recipe.data_spec import TRAIN_DATA, SourceSpec

SHUFFLE_BUFFER = 64
"""Records held for shuffling; small, because long-context records can be megabytes each."""


def check_source(spec: SourceSpec, tokenizer, seq_len: int, label: str, vocab_size: int | None = None) -> None:
    """Fail before the model loads for what can be known up front: a local source without files, a chat source without
    a template, a hub dataset that cannot be reached, records (in file order) that give no first document: a field
    missing, a line that does not parse; for a synthetic source, its first document at ``seq_len`` (more keys than
    there are names, a document that cannot fit); ``format: tokens`` ids of the first record below ``vocab_size``,
    the model's. A bad record further on stops the run when it is read. ``label``: where the recipe holds ``spec``."""
    chat_template(spec, tokenizer, label)
    if spec.source == "synthetic":
        next(synthetic_documents(spec, tokenizer, seq_len, synthetic_seed(0), label=label))
        return
    if spec.source in LOCAL_FORMATS:
        data_files(spec, label)
    first = next(text_documents(spec.model_copy(update={"shuffle": False}), tokenizer, 0, label))
    if spec.format == "tokens" and vocab_size is not None and first.input_ids:
        check_token_ids(max(first.input_ids), vocab_size, f"{label}.ids_field", f" in the first record of {spec.path}")


def check_token_ids(top: int, vocab_size: int, label: str, where: str = "") -> None:
    """A UserError when token id ``top`` is not below the model's vocabulary size."""
    if top >= vocab_size:
        raise UserError(f"{label}: token id {top}{where} is not below the model's vocabulary size {vocab_size} "
                        "(format: tokens ids must come from the model's tokenizer)")


def _read(records: Iterator[dict[str, Any]], spec: SourceSpec, label: str) -> Iterator[dict[str, Any]]:
    """``records``, a hub shard that cannot be parsed stopping the run with a one-line error."""
    while True:
        try:
            row = next(records)
        except StopIteration:
            return
        except (OSError, ValueError) as exc:
            raise UserError(f"{label}.path: cannot read {spec.path}: {reason(exc)}") from None
        yield row


def _rows(spec: SourceSpec, seed: int, label: str, cursor: SourceCursor) -> Iterator[dict[str, Any] | None]:
    """Rows ``{"record", "where"}`` forever (shuffled unless ``spec.shuffle`` is false), None after each epoch, from
    ``cursor``'s epoch and record on (those before it read and dropped, never tokenized); ``cursor`` counts the rows
    handed out."""
    dataset = record_dataset(spec, label)
    if spec.shuffle:
        dataset = dataset.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
    while True:
        dataset.set_epoch(cursor.epoch)
        rows = _read(iter(dataset), spec, label)
        if sum(1 for _ in islice(rows, cursor.records)) < cursor.records:
            raise UserError(f"{label}.path: {spec.path} holds fewer records than the checkpoint had read in epoch "
                            f"{cursor.epoch}; it changed since. Restore it, or start a new run with output.dir=...")
        for row in rows:
            cursor.records += 1
            yield row
        yield None  # end of an epoch
        cursor.epoch, cursor.records = cursor.epoch + 1, 0


def text_documents(spec: SourceSpec, tokenizer, seed: int, label: str = TRAIN_DATA,
                   cursor: SourceCursor | None = None) -> Iterator[Document]:
    """Endless documents of a file or hub source, in ``spec.format``, with its filters and upsampling; each epoch
    reshuffles (seeded). ``cursor``: where to start (a resumed stream's position), kept up to date as it reads."""
    cursor = SourceCursor() if cursor is None else cursor
    template = chat_template(spec, tokenizer, label)
    if cursor.rng is None:
        cursor.rng = random.Random(f"{seed}:upsample")
    last_bad = ""  # why the last record skipped was bad: when every one is, that is the error to show
    for row in _rows(spec, seed, label, cursor):
        if row is None:
            if not cursor.produced:
                skipped = f"; {cursor.skipped} record(s) skipped as bad, the last: {last_bad}" if last_bad else ""
                raise UserError(f"{label}.path: no {_kind(spec)} documents in {spec.path}{skipped}")
            continue
        doc, bad = _document(row, spec, tokenizer, template, label)
        if bad is not None:
            last_bad = bad
            if spec.bad_rows == "error":
                raise UserError(bad)
            cursor.skipped += 1
            continue
        if doc is None or not _kept(len(doc.input_ids), spec, cursor.rng):
            continue
        cursor.produced = True
        yield doc


def _document(row: dict[str, Any], spec: SourceSpec, tokenizer: Any, template: str | None,
              label: str) -> tuple[Document | None, str | None]:
    """The row's record as a document (None for an empty one), or None and the one line naming why the row is bad:
    its line does not parse, or its format cannot read the record."""
    line = unparsable(row)
    if line is not None:
        return None, line
    try:
        return to_document(row["record"], spec, tokenizer, template, label), None
    except BadRow as bad:
        return None, bad.line(label, row["where"])


def _kind(spec: SourceSpec) -> str:
    kind: str = spec.format
    if spec.min_tokens or spec.max_tokens:
        kind += f" ({spec.min_tokens or 1}-{spec.max_tokens or 'any'} tokens)"
    return kind


def _kept(length: int, spec: SourceSpec, thinning: random.Random) -> bool:
    if (spec.min_tokens and length < spec.min_tokens) or (spec.max_tokens and length > spec.max_tokens):
        return False
    if spec.upsample and length < spec.upsample.min_tokens:
        return thinning.random() < 1.0 / spec.upsample.factor
    return True


def source_documents(spec: SourceSpec, tokenizer, seq_len: int, seed: int, label: str = TRAIN_DATA,
                     cursor: SourceCursor | None = None) -> Iterator[Document]:
    """Endless documents of any source, from ``cursor``'s position (kept up to date); synthetic ones are generated
    from :func:`synthetic_seed`. ``label``: where the recipe holds ``spec``, which errors name."""
    if spec.source == "synthetic":
        return synthetic_documents(spec, tokenizer, seq_len, synthetic_seed(seed), cursor, label)
    return text_documents(spec, tokenizer, seed, label, cursor)


def synthetic_seed(seed: int) -> int:
    """The generator seed of a synthetic source: a digest of ``seed`` (as every earlier run drew it)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:0".encode()).digest()[:8], "big")
