"""One stage of a recipe alone, as the benchmarks that measure training run it: every step logged, no evaluation."""

from __future__ import annotations

from typing import Any

from toolkit.recipe.schema import EvalSpec, LoggingSpec, Recipe, TrainSpec


def stage_names(train: TrainSpec) -> list[str]:
    """Every stage's name, ``stage-<i>`` for one without."""
    return [train.stage_name(i) for i in range(len(train.stages))]


def stage_index(train: TrainSpec, stage: str) -> int | None:
    """The index of the stage ``stage`` names, by its name (:func:`stage_names`) or by its index; None when no stage
    is named so."""
    names = stage_names(train)
    if stage in names:
        return names.index(stage)
    return int(stage) if stage.isdigit() and int(stage) < len(names) else None


def one_stage(recipe: Recipe, index: int, max_steps: int | None = None) -> Recipe:
    """``recipe`` training its stage ``index`` alone, under that stage's name (for ``max_steps`` steps in place of
    its budget, when given), logging every step, with no evaluation."""
    update: dict[str, Any] = {"name": recipe.train.stage_name(index)}
    if max_steps is not None:
        update |= {"max_steps": max_steps, "max_tokens": None}
    stage = recipe.train.stages[index].model_copy(update=update)
    return recipe.model_copy(update={"train": recipe.train.model_copy(update={"stages": [stage]}),
                                     "eval": EvalSpec(before=False), "logging": LoggingSpec(backend="none", every=1)})
