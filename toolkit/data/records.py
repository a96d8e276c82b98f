"""Records of a file or hub source, each with where it came from (``file:line`` for JSONL), as a ``datasets``
stream: one shard per local file, so epochs reshuffle file order and processes share files or records.

Local files are read by the readers of ``toolkit.data.local_files`` (``IterableDataset.from_generator``) rather than
``datasets``' own builders, because only the reader knows each record's file and line, which errors about bad rows
name. A JSONL line that does not parse is a row too (:func:`toolkit.data.local_files.unparsable`), so the stream
counts it as read like any record, and a resumed one starts at the same place.
"""

from __future__ import annotations

from datasets import IterableDataset, load_dataset

from toolkit.data.local_files import FORMATS, data_files, source_path
from toolkit.errors import UserError, reason
from toolkit.recipe.data_spec import SourceSpec


def record_dataset(spec: SourceSpec, label: str) -> IterableDataset:
    """``{"record", "where"}`` rows of ``spec``'s source, streamed (nothing is loaded whole)."""
    path = source_path(spec)
    if spec.source == "hub":
        try:
            hub = load_dataset(path, spec.hub_config, split=spec.split, streaming=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"{label}.path: cannot open hub dataset {path!r}: {reason(exc)}") from None
        return hub.map(lambda record: {"record": record, "where": f"hub dataset {path!r}"},
                       remove_columns=list(hub.column_names or []))
    files = data_files(spec, label)
    return IterableDataset.from_generator(FORMATS[spec.source].reader,
                                          gen_kwargs={"files": files, "field": f"{label}.path"})
