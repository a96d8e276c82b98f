"""build_optimizer: AdamW with the recipe's settings; 8-bit optimizers need CUDA and bitsandbytes."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

from tests.devices import DEVICES
from toolkit.errors import UserError
from toolkit.memory.optimizers import build_optimizer
from toolkit.recipe.schema import TrainSpec


def _train(**fields) -> TrainSpec:
    return TrainSpec(stages=[{"seq_len": 64, "max_steps": 1}], **fields)


def test_adamw_takes_recipe_settings_and_steps() -> None:
    layer = torch.nn.Linear(4, 3)
    optimizer = build_optimizer(layer.parameters(), _train(weight_decay=0.1, betas=(0.8, 0.9)), lr=0.05)
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.05, (0.8, 0.9), 0.1)
    assert not group["fused"]
    before = layer.weight.detach().clone()
    layer(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    assert layer.weight.grad is not None
    # Adam's first step moves every weight by lr (sign of the gradient) plus decoupled decay lr * wd * w.
    torch.testing.assert_close(before - layer.weight.detach(), 0.05 * torch.sign(layer.weight.grad) + 0.005 * before,
                               atol=1e-4, rtol=1e-3)


def test_adamw_accepts_parameter_groups() -> None:
    layer = torch.nn.Linear(4, 3)
    groups: list[dict[str, Any]] = [{"params": [layer.weight]}, {"params": [layer.bias], "weight_decay": 0.0}]
    optimizer = build_optimizer(groups, _train(weight_decay=0.1), lr=1e-3)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


@pytest.mark.skipif(torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None,
                    reason="bitsandbytes with CUDA is installed")
@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_without_cuda_or_bitsandbytes_is_a_user_error(name: str) -> None:
    with pytest.raises(UserError, match=f"train.optimizer: {name}"):
        build_optimizer(torch.nn.Linear(2, 2).parameters(), _train(optimizer=name), lr=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_8bit_on_the_device(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = torch.nn.Linear(256, 256).to(device)
    if device == "cpu":  # bitsandbytes' 8-bit AdamW runs on CUDA alone: without it the recipe's choice is refused
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine with CUDA checks this too
        with pytest.raises(UserError, match="train.optimizer: adamw_8bit needs a CUDA GPU"):
            build_optimizer(layer.parameters(), _train(optimizer="adamw_8bit"), lr=1e-3)
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("needs bitsandbytes")
    optimizer = build_optimizer(layer.parameters(), _train(optimizer="adamw_8bit", weight_decay=0.0), lr=1e-3)
    before = layer.weight.detach().clone()
    layer(torch.ones(2, 256, device="cuda")).sum().backward()
    optimizer.step()
    assert type(optimizer).__name__ == "AdamW8bit"
    # Adam's first step moves each weight by about lr against the sign of its gradient
    grad = layer.weight.grad
    assert grad is not None
    torch.testing.assert_close(layer.weight.detach() - before, -1e-3 * grad.sign(), atol=1e-4, rtol=0)
