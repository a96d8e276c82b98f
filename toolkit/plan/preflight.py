"""The runner's check before loading the model: a run whose offloaded activations will not fit in host memory
stops here, with the numbers, instead of being killed by the kernel hours later."""

from __future__ import annotations

from transformers import PretrainedConfig

from toolkit.errors import RunFailure
from toolkit.plan.command import stage_setup
from toolkit.plan.memory import GIB, estimate, shape_from_config
from toolkit.plan.placement import HOST_MEMORY_ENV, available_memory
from toolkit.recipe.schema import Recipe


def check_host_memory(recipe: Recipe, config: PretrainedConfig, processes: int, local_processes: int) -> None:
    """Raise :class:`RunFailure` when a stage's offloaded activations and the ``local_processes`` training processes
    on this machine need more host memory than is available (``TOOLKIT_HOST_MEMORY_GIB`` replaces that); ``config``:
    the model's (:func:`~toolkit.model.loading.recipe_config`)."""
    if not (recipe.train.gradient_checkpointing and recipe.train.activation_offload):
        return
    shape = shape_from_config(config.to_dict())
    available = available_memory()
    for index in range(len(recipe.train.stages)):
        result = estimate(shape, stage_setup(recipe, index, processes))
        needed = result.host_needed * local_processes
        if needed > available:
            fp8 = "" if recipe.train.activation_offload_dtype == "fp8" else ", store them as fp8 " \
                "(train.activation_offload_dtype: fp8)"
            raise RunFailure(
                f"host memory: stage {recipe.train.stage_name(index)} needs {needed / GIB:.1f} GiB "
                f"({local_processes} process(es) x ({result.host / GIB:.1f} GiB offloaded activations + "
                f"{(result.host_needed - result.host) / GIB:.1f} GiB)), {available / GIB:.1f} GiB available "
                f"({HOST_MEMORY_ENV} or MemAvailable): offload fewer layers (train.activation_offload: N){fp8} or "
                f"shorten the stage; python -m toolkit plan RECIPE --host-memory GIB finds a placement")
