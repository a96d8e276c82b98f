"""What ``validate`` checks of a recipe beyond its schema and suites, offline and without a model or a tokenizer: the
local inputs ``train`` reads, each by the check ``train`` runs on it (its owner's), and that ``output.dir`` can be
written. Names by hub id need the network and are left to ``train``; so is all that needs the tokenizer (records
that make no document, sequence-length fit)."""

from __future__ import annotations

from toolkit.data.formats import named_chat_template
from toolkit.data.local_files import LOCAL_FORMATS, check_local_source
from toolkit.data.tokenizer import tokenizer_source
from toolkit.hub.ids import looks_local
from toolkit.model.loading import check_model_source
from toolkit.output_paths import check_writable
from toolkit.recipe.schema import Recipe


def check_local_inputs(recipe: Recipe) -> list[str]:
    """A :class:`UserError` naming the field of the first local input that ``train`` would stop at: a model or
    tokenizer folder, a data source's files or first record, a chat template file, ``output.dir`` (checked without
    making anything). Returns the hub ids it left unchecked, each once, in the recipe's order."""
    hub: list[str] = []
    model = recipe.model
    if model.name_or_path is not None:
        check_model_source(model.name_or_path, "model.name_or_path")
        if not looks_local(model.name_or_path):
            hub.append(model.name_or_path)
    tokenizer = tokenizer_source(model)
    if tokenizer is not None and not looks_local(tokenizer):
        hub.append(tokenizer)
    train = recipe.train
    sources = {field: spec for index in range(len(train.stages)) for field, spec in train.stage_sources(index)}
    for field, spec in sources.items():
        named_chat_template(spec, field)
        if spec.source in LOCAL_FORMATS:
            check_local_source(spec, field)
        elif spec.source == "hub" and spec.path is not None:
            hub.append(spec.path)
    check_writable(recipe.run_dir, "output.dir")
    return list(dict.fromkeys(hub))
