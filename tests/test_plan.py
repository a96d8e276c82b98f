"""The memory plan: Llama-3-8B numbers in the right ballpark, each switch moving the right part, advice when a
stage does not fit, shapes without downloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.errors import UserError
from toolkit.plan.command import plan, print_plan
from toolkit.plan.memory import (
    GIB,
    KNOWN_SHAPES,
    RUNTIME_OVERHEAD,
    ModelShape,
    Setup,
    estimate,
    shape_for,
    shape_from_config,
    step_flops,
)
from toolkit.recipe.loading import load_recipe
from toolkit.recipe.schema import Recipe

LLAMA3_8B = KNOWN_SHAPES["meta-llama/Meta-Llama-3-8B"]
ROOT = Path(__file__).resolve().parents[1]


def _gib(setup: Setup, part: str) -> float:
    return estimate(LLAMA3_8B, setup).parts[part] / GIB


def test_llama3_8b_weights_gradients_optimizer() -> None:
    assert LLAMA3_8B.params == pytest.approx(8.03e9, rel=0.002)
    full = Setup(seq_len=8192)
    assert _gib(full, "weights") == pytest.approx(8.03e9 * 2 / GIB, rel=0.01)  # ~15 GiB in bf16
    assert _gib(full, "gradients") == pytest.approx(_gib(full, "weights"), rel=0.01)
    assert _gib(full, "fp32 master weights") == pytest.approx(2 * _gib(full, "weights"), rel=0.01)
    assert _gib(full, "optimizer state") == pytest.approx(4 * _gib(full, "weights"), rel=0.01)  # fp32 moments
    held = sum(_gib(full, part) for part in ("weights", "fp32 master weights", "optimizer state"))
    assert held * GIB == pytest.approx(8.03e9 * 14, rel=0.01)  # about 112 GB before gradients and activations
    lora = Setup(seq_len=8192, lora_rank=16, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    adapters = 32 * 16 * (2 * (4096 + 4096) + 2 * (4096 + 1024))  # r (in + out) per projection and layer
    assert LLAMA3_8B.lora_params(16, list(lora.lora_targets)) == adapters
    assert _gib(lora, "optimizer state") == pytest.approx(adapters * 8 / GIB)  # fp32 adapters, fp32 moments
    assert _gib(lora, "gradients") == pytest.approx(adapters * 4 / GIB)
    assert _gib(lora, "fp32 master weights") == 0  # the adapters are fp32 themselves
    norms = lora.with_(fully_trained=("norm",))
    assert _gib(norms, "fp32 master weights") * GIB == pytest.approx(4 * (2 * 32 + 1) * 4096, abs=1)
    assert _gib(Setup(seq_len=8192, optimizer="adamw_8bit"), "optimizer state") == pytest.approx(
        8.03e9 * 2 / GIB, rel=0.01)
    assert _gib(Setup(seq_len=8192, param_bytes=4), "fp32 master weights") == 0


def test_sharding_divides_model_state_and_sequence_parallel_divides_activations() -> None:
    one, eight = Setup(seq_len=65536, checkpointing=True), Setup(seq_len=65536, checkpointing=True, gpus=8)
    layer_gathers = 2 * LLAMA3_8B.layer_params * 2 / GIB
    assert _gib(eight, "weights") == pytest.approx(_gib(one, "weights") / 8 + layer_gathers, rel=1e-6)
    assert _gib(eight, "optimizer state") == pytest.approx(_gib(one, "optimizer state") / 8, rel=1e-6)
    split = eight.with_(sequence_degree=8)
    for part in ("activations kept", "layer working set", "logits"):
        assert _gib(split, part) == pytest.approx(_gib(eight, part) / 8, rel=1e-3)


def test_each_switch_shrinks_its_part() -> None:
    plain = Setup(seq_len=32768)
    checkpointed = plain.with_(checkpointing=True)
    # checkpointing keeps one hidden vector per layer and token instead of every intermediate
    assert _gib(checkpointed, "activations kept") < _gib(plain, "activations kept") / 20
    offloaded = checkpointed.with_(offload=True)
    assert estimate(LLAMA3_8B, offloaded).host == pytest.approx(32 * 32768 * 4096 * 2)
    assert _gib(offloaded, "activations kept") < _gib(checkpointed, "activations kept") / 4
    assert _gib(plain, "logits") == pytest.approx(32768 * 128256 * 10 / GIB)
    assert _gib(plain.with_(loss_chunk=4096), "logits") == pytest.approx(_gib(plain, "logits") / 8)
    tiled = checkpointed.with_(tiles=8)
    assert _gib(tiled, "layer working set") < 0.6 * _gib(checkpointed, "layer working set")
    eager = plain.with_(attention="eager", checkpointing=True)
    longer = eager.with_(seq_len=65536)
    assert _gib(plain, "attention matrix") == 0
    assert _gib(longer, "attention matrix") == pytest.approx(4 * _gib(eager, "attention matrix"))


def test_flops_formula() -> None:
    tokens = 4096
    dense_full = step_flops(LLAMA3_8B, tokens, seq_len=1, trainable_fraction=1.0)
    matmul_params = LLAMA3_8B.params - LLAMA3_8B.vocab * LLAMA3_8B.hidden
    assert dense_full == pytest.approx(6 * matmul_params * tokens, rel=1e-3)
    assert step_flops(LLAMA3_8B, tokens, 1, 0.0) == pytest.approx(dense_full * 4 / 6, rel=1e-3)
    attention = step_flops(LLAMA3_8B, tokens, tokens) - step_flops(LLAMA3_8B, tokens, 1)
    assert attention == pytest.approx(6 * 32 * 4096 * tokens * (tokens - 1))


def _recipe(**train: object) -> Recipe:
    return Recipe.model_validate({
        "name": "plan-test", "model": {"name_or_path": "meta-llama/Meta-Llama-3-8B"}, "method": {"kind": "full"},
        "train": {"stages": [{"name": "short", "seq_len": 8192, "max_steps": 1},
                             {"name": "long", "seq_len": 262144, "max_steps": 1}], **train}})


def test_print_plan_gives_verdicts_and_advice(capsys: pytest.CaptureFixture[str]) -> None:
    assert print_plan(plan(_recipe(loss_chunk_size=None), gpus=8, gpu_memory_gib=80)) == 1  # the long stage
    out = capsys.readouterr().out
    verdict_row = next(line for line in out.splitlines() if line.startswith("verdict "))
    assert verdict_row.split()[1:] == ["FITS", "DOES", "NOT", "FIT"]
    advice = out.split("long: needs")[1]
    assert "train.gradient_checkpointing: true" in advice and "train.loss_chunk_size: 4096" in advice
    steps = [line for line in advice.splitlines() if line.startswith("  - ")]
    assert float(steps[-1].split("-> ")[1].split(" GiB")[0]) <= 80  # the path ends where the stage fits


def test_plan_of_the_shipped_1m_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    """Its four stages up to 1M tokens fit 8 x 80 GiB with a large host, and each total is the sum of its parts."""
    assert print_plan(plan(load_recipe(ROOT / "recipes/llama3-8b-1m-progressive.yaml"), gpus=8, gpu_memory_gib=80,
                           host_memory_gib=1000)) == 0
    lines = capsys.readouterr().out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("seq_len x batch"))
    total = next(i for i, line in enumerate(lines) if line.startswith("total per GPU (GiB)"))
    assert lines[first].split()[-3:] == ["1,048,576", "x", "1"]
    parts = [[float(value) for value in line.split()[-4:]] for line in lines[first + 1:total]]
    totals = [float(value) for value in lines[total].split()[-4:]]
    assert totals == pytest.approx([sum(column) for column in zip(*parts, strict=True)], abs=0.06)
    assert "verdict: 4 of 4 stage(s) fit the GPU and the host" in lines


def test_shapes_come_from_config_or_table_never_a_download(tmp_path: Path) -> None:
    tiny = shape_for(None, {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                            "intermediate_size": 128}, vocab=300)
    assert (tiny.hidden, tiny.layers, tiny.vocab, tiny.kv_heads) == (64, 2, 300, 4)
    sizes = {"hidden_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 256}
    (tmp_path / "config.json").write_text(json.dumps({**sizes, "vocab_size": 1000}))
    assert shape_for(str(tmp_path), None).hidden == 96
    assert shape_for("meta-llama/Llama-3.1-70B-Instruct", None).layers == 80
    with pytest.raises(UserError, match="model.name_or_path: .*init_config"):
        shape_for("someone/unknown-model", None)


@pytest.mark.parametrize("gpus, memory, message", [(0, 80, "--gpus"), (1, 0, "--gpu-memory")])
def test_bad_arguments_are_user_errors(gpus: int, memory: float, message: str) -> None:
    with pytest.raises(UserError, match=message):
        plan(_recipe(), gpus=gpus, gpu_memory_gib=memory)


def test_overhead_is_counted_once() -> None:
    result = estimate(LLAMA3_8B, Setup(seq_len=1))
    assert result.parts["runtime overhead"] == RUNTIME_OVERHEAD
    assert result.total == sum(result.parts.values())
    # what an allocator reports: neither the runtime's overhead nor the reserve it keeps cached
    assert result.allocated == result.total - RUNTIME_OVERHEAD - result.parts["allocator reserve"]


def test_a_shape_reads_back_from_its_llama_config() -> None:
    tied = ModelShape(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=320, tied=True, head_dim=32)
    for shape in (LLAMA3_8B, tied):
        assert shape_from_config(shape.llama_config()) == shape
