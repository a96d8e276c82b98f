"""The optimizer named by ``train.optimizer``: torch AdamW (fused on CUDA) or bitsandbytes' 8-bit AdamW; under
DeepSpeed with the optimizer state offloaded to host memory, DeepSpeed's CPU Adam in AdamW mode (the same update).
Low-precision trainable weights are stepped through fp32 master weights (``toolkit.memory.master_weights``) unless
the engine keeps its own.

Optimizer state per trainable parameter: AdamW keeps two float32 moments (8 bytes); the 8-bit variants keep
two blockwise-quantised moments (about 2 bytes), and the paged one lets that state spill to host memory
under pressure. For LoRA the trainable parameters are the adapters alone, so the state is small either way.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from toolkit.errors import UserError
from toolkit.memory.master_weights import MasterWeights
from toolkit.recipe.schema import TrainSpec

_BITSANDBYTES = {"adamw_8bit": "AdamW8bit", "paged_adamw_8bit": "PagedAdamW8bit"}


def build_optimizer(params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], train: TrainSpec,
                    lr: float, offloaded: bool = False, masters: bool = True) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``params`` with ``lr``, ``train.betas`` and ``train.weight_decay``; ``offloaded``:
    DeepSpeed keeps the optimizer state in host memory (``toolkit.parallel.engines.offloads_optimizer``);
    ``masters``: keep fp32 master weights of bf16 parameters here (False where the engine keeps its own:
    ``toolkit.parallel.engines``)."""
    groups: list[Any] = list(params)  # parameters, or param groups (dicts with "params")
    kept = MasterWeights(_tensors(groups)) if masters else None
    if kept is None or not kept.pairs:
        return _build(groups, train, lr, offloaded)
    return kept.attach(_build(kept.stand_in(groups), train, lr, offloaded))


def _build(groups: list[Any], train: TrainSpec, lr: float, offloaded: bool) -> torch.optim.Optimizer:
    options: dict[str, Any] = dict(lr=lr, betas=tuple(train.betas), weight_decay=train.weight_decay)
    if offloaded:
        if train.optimizer != "adamw":
            raise UserError(f"train.optimizer: {train.optimizer} does not run with DeepSpeed's optimizer offload "
                            "(offload_optimizer_device in the launch config); use adamw, or a config without offload")
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **options)
    if train.optimizer == "adamw":
        on_cuda = all(p.is_cuda for p in _tensors(groups))
        return torch.optim.AdamW(groups, fused=on_cuda or None, **options)
    if not torch.cuda.is_available():
        raise UserError(f"train.optimizer: {train.optimizer} needs a CUDA GPU (bitsandbytes); "
                        "use adamw on this machine")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"train.optimizer: {train.optimizer} needs bitsandbytes: pip install '.[bnb]'")
    import bitsandbytes as bnb

    return getattr(bnb.optim, _BITSANDBYTES[train.optimizer])(groups, **options)


def _tensors(params: list[Any]) -> list[torch.Tensor]:
    if params and isinstance(params[0], dict):
        return [p for group in params for p in group["params"]]
    return params
