"""fp32 master weights for trainable parameters held in bf16, on one process and under DDP.

An optimizer that steps bf16 weights rounds away every update smaller than half a bf16 ulp of its weight: at lr 1e-5
most entries of a Llama matrix never move. Here the optimizer steps float32 copies (its moments are float32 too), and
after each step the model's bf16 weights are refreshed from them, so the forward and backward stay in bf16. Cost:
4 bytes per trainable parameter beyond the weights, gradients and moments. Gradients accumulate over micro-batches in
the model's dtype and are cast to float32 at the step. (LoRA adapters are held in float32 themselves:
``toolkit.model.lora.apply_lora``.)

The masters are the optimizer's parameters, and its ``state_dict`` carries their values, so a checkpoint resumes them
exactly. FSDP2 and DeepSpeed keep float32 masters themselves (``toolkit.parallel.engines.keeps_own_masters``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from toolkit.model.precision import HALF, precision_name

MASTERS_KEY = "fp32_master_weights"
"""The optimizer ``state_dict`` entry holding the master values (a list, in parameter order)."""


def describe_precision(dtype: torch.dtype) -> str:
    """How a run computes and keeps its trainable weights (``run_info.json``, the report): every launcher keeps
    float32 masters of low-precision trainable weights."""
    name = precision_name(dtype)
    return name if dtype == torch.float32 else f"{name} compute, fp32 master weights"


class MasterWeights:
    """Float32 copies of the low-precision parameters among ``params``, for one optimizer to step."""

    def __init__(self, params: list[torch.Tensor]):
        low = [p for p in params if p.dtype in HALF]
        self.pairs = [(p, nn.Parameter(p.detach().float())) for p in low]
        self._master_of = {id(weight): master for weight, master in self.pairs}

    def stand_in(self, params: list[Any]) -> list[Any]:
        """``params`` (parameters, or param groups: dicts with ``"params"``) with each low-precision weight replaced
        by its master."""
        if params and isinstance(params[0], dict):
            return [{**group, "params": self.stand_in(list(group["params"]))} for group in params]
        return [self._master_of.get(id(p), p) for p in params]

    def attach(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Hook the masters into ``optimizer`` (built over :meth:`stand_in`): gradients go to the masters before each
        step, the weights are refreshed after it, and ``state_dict`` / ``load_state_dict`` carry the masters."""
        optimizer.register_step_pre_hook(lambda *_: self._gradients_to_masters())
        optimizer.register_step_post_hook(lambda *_: self._masters_to_weights())
        optimizer.register_state_dict_post_hook(self._save)
        optimizer.register_load_state_dict_pre_hook(self._load)
        return optimizer

    @torch.no_grad()
    def _gradients_to_masters(self) -> None:
        for weight, master in self.pairs:
            master.grad = None if weight.grad is None else weight.grad.float()
            weight.grad = None

    @torch.no_grad()
    def _masters_to_weights(self) -> None:
        for weight, master in self.pairs:
            weight.copy_(master)

    def _save(self, _optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
        return {**state, MASTERS_KEY: [master.detach().clone() for _, master in self.pairs]}

    @torch.no_grad()
    def _load(self, _optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
        """Masters from the checkpoint; one written without them takes the weights just loaded (accelerate loads the
        model before the optimizer)."""
        saved = state.pop(MASTERS_KEY, None)
        values = saved if saved is not None else [weight for weight, _ in self.pairs]
        if len(values) != len(self.pairs):
            raise ValueError(f"optimizer state: {len(values)} fp32 master weights for {len(self.pairs)} parameters")
        for (_, master), value in zip(self.pairs, values, strict=True):
            master.copy_(value)
        return state
