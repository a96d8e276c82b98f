"""The plan counts the dense L×L mask that packed rows get under sdpa or eager, and only then."""

from __future__ import annotations

import pytest

from toolkit.plan.command import advice, stage_setup
from toolkit.plan.memory import GIB, KNOWN_SHAPES, Setup, estimate
from toolkit.recipe.schema import Recipe

LLAMA3_8B = KNOWN_SHAPES["meta-llama/Meta-Llama-3-8B"]


def _recipe(attention: str, packing: str = "pack") -> Recipe:
    return Recipe.model_validate({
        "name": "mask", "model": {"name_or_path": "meta-llama/Meta-Llama-3-8B", "attention": attention},
        "method": {"kind": "lora"},
        "train": {"data": {"packing": packing},
                  "stages": [{"seq_len": 65536, "max_steps": 1},
                             {"seq_len": 131072, "max_steps": 1, "batch_size": 2}]}})


@pytest.mark.parametrize(("attention", "packing", "gib"), [
    ("sdpa", "pack", (4.0, 32.0)),           # bool [B,1,L,L]: 4 GiB at 64K, 2 x 16 GiB at 128K
    ("eager", "pack", (8.0, 64.0)),           # bf16 additive mask
    ("sdpa", "split", (0.0, 0.0)),            # one document per row: causal, no mask
    ("auto", "pack", (0.0, 0.0)),             # flash-attention, varlen or flex on a GPU
    ("flash_attention_2", "pack", (0.0, 0.0)),
    ("flex_attention", "pack", (0.0, 0.0)),
])
def test_the_mask_term(attention: str, packing: str, gib: tuple[float, float]) -> None:
    recipe = _recipe(attention, packing)
    for index, expected in enumerate(gib):
        assert estimate(LLAMA3_8B, stage_setup(recipe, index, gpus=1)).parts["attention mask"] / GIB == expected


def test_advice_first_drops_the_mask() -> None:
    setup = stage_setup(_recipe("sdpa"), 1, gpus=1)
    with_mask = estimate(LLAMA3_8B, setup).total
    steps = advice(LLAMA3_8B, setup, budget=80 * GIB).lines
    assert steps[0].startswith("model.attention: auto")
    assert float(steps[0].split("-> ")[1].split(" GiB")[0]) == pytest.approx((with_mask - 32 * GIB) / GIB, abs=0.05)
    assert estimate(LLAMA3_8B, Setup(seq_len=131072, batch_size=2)).parts["attention mask"] == 0
