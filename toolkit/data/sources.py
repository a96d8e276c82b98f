"""Real text for training: local JSONL, parquet or text files (a file or a folder of them), or a hub dataset.

Records stream through ``datasets`` (nothing is loaded whole), are shuffled with a small seeded buffer that
reshuffles every epoch, shared round-robin between processes, and cycled forever. A text file is one
document (long-context data: books, code files); a JSONL or parquet record is one document.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from datasets import IterableDataset, load_dataset
from datasets.distributed import split_dataset_by_node

from toolkit.data.packing import IGNORE_INDEX, Document
from toolkit.errors import UserError
from toolkit.schema import DataSpec

SHUFFLE_BUFFER = 64
"""Records held for shuffling; small, because long-context records can be megabytes each."""
_BUILDERS = {"jsonl": "json", "parquet": "parquet", "text": "text"}
_SUFFIXES = {"jsonl": (".jsonl", ".json", ".jsonl.gz", ".json.gz"), "parquet": (".parquet",), "text": (".txt", ".md")}


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _source_path(spec: DataSpec) -> str:
    """``spec.path``, which the schema requires of every source but synthetic."""
    if spec.path is None:
        raise UserError(f"train.data.path: source {spec.source!r} needs a path")
    return spec.path


def data_files(spec: DataSpec) -> list[str]:
    """The files of a local source: ``spec.path`` itself, or every matching file below that folder."""
    path = Path(_source_path(spec)).expanduser()
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        raise UserError(f"train.data.path: no such file: {spec.path}")
    suffixes = _SUFFIXES[spec.source]
    files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))
    if not files:
        raise UserError(f"train.data.path: no {'/'.join(suffixes)} files in {spec.path}")
    return files


def _dataset(spec: DataSpec) -> IterableDataset:
    if spec.source == "hub":
        try:
            return load_dataset(spec.path, spec.hub_config, split=spec.split, streaming=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"train.data.path: cannot open hub dataset {spec.path!r}: {_reason(exc)}") from None
    extra = {"sample_by": "document"} if spec.source == "text" else {}
    return load_dataset(_BUILDERS[spec.source], data_files=data_files(spec), split="train", streaming=True, **extra)


def _records(dataset: Iterable[dict[str, Any]], where: str) -> Iterator[dict[str, Any]]:
    """``dataset``'s records; a file that cannot be parsed is the user's error."""
    iterator = iter(dataset)
    while True:
        try:
            record = next(iterator)
        except StopIteration:
            return
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise UserError(f"train.data.path: cannot read {where}: {_reason(exc)}") from None
        yield record


def _text(record: dict[str, Any], spec: DataSpec) -> str | None:
    if spec.text_field not in record:
        raise UserError(f"train.data.text_field: no field {spec.text_field!r} in {spec.path} "
                        f"(fields: {', '.join(record)})")
    value = record[spec.text_field]
    if value is not None and not isinstance(value, str):
        raise UserError(f"train.data.text_field: {spec.text_field!r} in {spec.path} holds "
                        f"{type(value).__name__}, not text")
    return value


def text_documents(spec: DataSpec, tokenizer, seed: int, process_index: int = 0,
                   num_processes: int = 1) -> Iterator[Document]:
    """Endless documents ``bos + text + eos`` with every token but the first as a label.

    Each epoch reshuffles (seeded); process ``process_index`` of ``num_processes`` gets its own share.
    """
    dataset = split_dataset_by_node(_dataset(spec).shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER),
                                    rank=process_index, world_size=num_processes)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        produced = False
        for record in _records(dataset, _source_path(spec)):
            text = _text(record, spec)
            if not text:
                continue
            input_ids = bos + tokenizer(text, add_special_tokens=False)["input_ids"] + eos
            produced = True
            yield Document(input_ids, [IGNORE_INDEX] + input_ids[1:])
        if not produced:
            raise UserError(f"train.data.path: no text documents in {spec.path}"
                            + (f" for process {process_index} of {num_processes}" if num_processes > 1 else ""))
        epoch += 1
