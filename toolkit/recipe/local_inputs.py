"""What ``validate`` checks of a recipe beyond its schema and suites, offline and without a model or a tokenizer:
that ``output.dir`` can be written (first, as ``train`` checks it; nothing is made), a local model or tokenizer
folder, every local data source of every stage and mixture (files of its format, the first record readable), chat
template files, the eval suites' local judge folders. Names by hub id need the network and are left to ``train``
(the ok line lists them); so is all that needs the tokenizer (records that make no document, sequence-length fit).
Each check is its owner's, which ``train`` runs too."""

from __future__ import annotations

from toolkit.data.formats import named_chat_template
from toolkit.data.local_files import LOCAL_FORMATS, check_local_source
from toolkit.evals.suite import load_suites
from toolkit.hub.ids import looks_local
from toolkit.model.sources import check_model_source, tokenizer_source
from toolkit.output_paths import check_writable
from toolkit.recipe.schema import Recipe


def check_local_inputs(recipe: Recipe) -> list[str]:
    """A :class:`UserError` naming the field of the first local input at fault (the module's list, in its order);
    returns the hub ids it left unchecked, each once, in the recipe's order."""
    check_writable(recipe.run_dir, "output.dir")
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
    hub += _local_judges(recipe)
    return list(dict.fromkeys(hub))


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
