"""bf16 training keeps its updates: trainable weights are stepped through fp32 master weights, so at a realistic
learning rate (1e-5) a bf16 run's weights move as far as an fp32 run's from the same start, for full and LoRA
fine-tuning, and a resumed bf16 run continues from the exact masters."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from tests.conftest import MICRO_RECIPE, write_recipe
from tests.runs import ROOT, StopAfter, accelerate_launch, assert_same_weights, final_weights, metrics, train
from toolkit.data.tokenizer import load_tokenizer
from toolkit.memory.master_weights import MASTERS_KEY, MasterWeights, describe_precision
from toolkit.memory.optimizers import build_optimizer
from toolkit.model.loading import build_random
from toolkit.recipe.schema import ModelSpec, Recipe, TrainSpec
from toolkit.runner import train_stages
from toolkit.training.faults import StopFlag
from toolkit.training.session import setup

STEPS, LR = 40, 1e-5


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro recipe's model and tokenizer, its weights rounded to bf16 (stored in fp32): the same start for a bf16
    and an fp32 run."""
    folder = tmp_path_factory.mktemp("base")
    spec = ModelSpec.model_validate(MICRO_RECIPE["model"])
    tokenizer = load_tokenizer(spec, seed=0)
    assert spec.init_config is not None
    model = build_random(spec.init_config, tokenizer, "sdpa", torch.float32, seed=0, device=torch.device("cpu"))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _settings(base: Path, out: Path, precision: str, method: dict[str, Any]) -> dict[str, Any]:
    return {"name": "bf16-masters", "seed": 0, "output": {"dir": str(out)},
            "model": {"name_or_path": str(base), "precision": precision, "attention": "sdpa"},
            "method": method,
            "train": {"data": MICRO_RECIPE["train"]["data"], "loss_chunk_size": 48, "weight_decay": 0.0,
                      "stages": [{"seq_len": 64, "max_steps": STEPS, "lr": LR, "batch_size": 4, "warmup_steps": 0}]},
            "eval": {"suites": []}, "logging": {"every": STEPS}}


def _recipe(base: Path, out: Path, precision: str, method: dict[str, Any]) -> Recipe:
    return Recipe.model_validate(_settings(base, out, precision, method))


@contextmanager
def _fresh_accelerate() -> Iterator[None]:
    try:
        yield
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def _movement(recipe: Recipe) -> tuple[dict[str, float], set[torch.dtype]]:
    """Mean |final - initial| of every trained matrix, through the runner's own setup and stages, and the dtypes
    those matrices are held in."""
    with _fresh_accelerate():
        session = setup(recipe)
        trained = {n: p for n, p in session.model.named_parameters() if p.requires_grad and p.dim() == 2}
        initial = {n: p.detach().float().clone() for n, p in trained.items()}
        train_stages(session, StopFlag())
        session.logger.close()
    moved = {n: (p.detach().float() - initial[n]).abs().mean().item() for n, p in trained.items()}
    return moved, {p.dtype for p in trained.values()}


@pytest.mark.parametrize(("method", "held"), [({"kind": "full"}, torch.bfloat16),
                                              ({"kind": "lora", "lora": {"r": 8, "alpha": 16}}, torch.float32)],
                         ids=["full", "lora"])
def test_bf16_weights_move_as_far_as_fp32_at_lr_1e_5(base: Path, tmp_path: Path, method: dict[str, Any],
                                                     held: torch.dtype) -> None:
    """Full fine-tuning: bf16 weights stepped through fp32 masters; LoRA: adapters held in fp32, computed in bf16."""
    fp32, _ = _movement(_recipe(base, tmp_path / "fp32", "fp32", method))
    bf16, dtypes = _movement(_recipe(base, tmp_path / "bf16", "bf16", method))
    assert dtypes == {held}
    assert fp32.keys() == bf16.keys() and len(fp32) >= 8
    ratios = {name: bf16[name] / fp32[name] for name in fp32}
    assert min(ratios.values()) >= 0.9, sorted(ratios.items(), key=lambda item: item[1])[:3]
    assert max(ratios.values()) <= 1.5, sorted(ratios.items(), key=lambda item: item[1])[-3:]


def test_without_masters_bf16_updates_are_rounded_away() -> None:
    """The failure masters prevent, measured on one matrix: AdamW stepping bf16 weights directly at lr 1e-5."""
    torch.manual_seed(0)
    start = (torch.randn(256, 256) * 0.02).bfloat16()
    direction = torch.randn(256, 256, generator=torch.Generator().manual_seed(STEPS)).sign()
    gradients = [direction + 0.5 * torch.randn(256, 256, generator=torch.Generator().manual_seed(i))
                 for i in range(STEPS)]  # a steady direction with noise, as in training
    train = TrainSpec(stages=[{"seq_len": 64, "max_steps": STEPS}])

    def moved(dtype: torch.dtype, masters: bool) -> float:
        weight = torch.nn.Parameter(start.to(dtype, copy=True))
        optimizer = build_optimizer([weight], train, lr=LR, masters=masters)
        for gradient in gradients:
            weight.grad = gradient.to(dtype)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return (weight.detach().float() - start.float()).abs().mean().item()

    fp32 = moved(torch.float32, masters=True)
    assert moved(torch.bfloat16, masters=True) >= 0.9 * fp32
    assert moved(torch.bfloat16, masters=False) < 0.5 * fp32


def test_masters_travel_in_the_optimizer_state() -> None:
    train = TrainSpec(stages=[{"seq_len": 64, "max_steps": 1}])
    weight = torch.nn.Parameter(torch.randn(8, 8).bfloat16())
    frozen_fp32 = torch.nn.Parameter(torch.randn(8))
    optimizer = build_optimizer([weight, frozen_fp32], train, lr=1e-3)
    weight.grad, frozen_fp32.grad = torch.ones(8, 8, dtype=torch.bfloat16), torch.ones(8)
    optimizer.step()
    master = optimizer.param_groups[0]["params"][0]
    assert master.dtype == torch.float32 and optimizer.param_groups[0]["params"][1] is frozen_fp32
    assert torch.equal(weight.detach(), master.detach().bfloat16())
    state = optimizer.state_dict()
    assert [t.dtype for t in state[MASTERS_KEY]] == [torch.float32]

    other = torch.nn.Parameter(torch.zeros(8, 8).bfloat16())
    restored = build_optimizer([other, torch.nn.Parameter(torch.zeros(8))], train, lr=1e-3)
    restored.load_state_dict(state)
    assert torch.equal(restored.param_groups[0]["params"][0], master)
    assert MASTERS_KEY in state  # loading does not consume the caller's dict


def test_a_checkpoint_without_masters_takes_the_loaded_weights() -> None:
    weight = torch.nn.Parameter(torch.zeros(4).bfloat16())
    masters = MasterWeights([weight])
    optimizer = masters.attach(torch.optim.AdamW(masters.stand_in([weight]), lr=1e-3))
    state = {key: value for key, value in optimizer.state_dict().items() if key != MASTERS_KEY}
    with torch.no_grad():
        weight.fill_(2.0)  # what the checkpoint's model weights set before the optimizer loads
    optimizer.load_state_dict(state)
    assert torch.equal(masters.pairs[0][1].detach(), torch.full((4,), 2.0))


def test_run_info_says_how_weights_are_kept() -> None:
    assert describe_precision(torch.bfloat16) == "bf16 compute, fp32 master weights"
    assert describe_precision(torch.float32) == "fp32"


def test_a_resumed_bf16_run_reproduces_the_uninterrupted_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Masters saved with the optimizer: stopped after 3 steps and resumed, a bf16 run ends where the uninterrupted
    one does, bit for bit."""
    import toolkit.runner

    recipe = dict(MICRO_RECIPE, model=dict(MICRO_RECIPE["model"], precision="bf16"))
    whole = write_recipe(tmp_path, dict(recipe, output={"dir": str(tmp_path / "whole")}), "whole.yaml")
    parts = write_recipe(tmp_path, dict(recipe, output={"dir": str(tmp_path / "parts")}), "parts.yaml")
    assert train(whole, "train.save_every=1") == 0

    @contextmanager
    def stop_after_three() -> Iterator[StopAfter]:
        yield StopAfter(3)

    monkeypatch.setattr(toolkit.runner, "stop_on_signals", stop_after_three)
    assert train(parts, "train.save_every=1") == 143
    monkeypatch.undo()
    assert train(parts, "train.save_every=1", "train.resume=true") == 0
    assert_same_weights(final_weights(tmp_path / "parts"), final_weights(tmp_path / "whole"), atol=0,
                        dtype=torch.bfloat16)
    assert [r["loss"] for r in metrics(tmp_path / "parts")] == [r["loss"] for r in metrics(tmp_path / "whole")]


@pytest.mark.slow
def test_deepspeed_zero3_keeps_fp32_masters_under_bf16(base: Path, tmp_path: Path) -> None:
    """ZeRO-3 on two CPU processes, ``precision: bf16``: the optimizer steps float32 partitions (as its checkpoint
    shows), so the saved bf16 weights move as far as a one-process fp32 run's."""
    fp32 = write_recipe(tmp_path, _settings(base, tmp_path / "fp32", "fp32", {"kind": "full"}), "fp32.yaml")
    bf16 = write_recipe(tmp_path, _settings(base, tmp_path / "zero3", "bf16", {"kind": "full"}), "bf16.yaml")
    assert train(fp32) == 0
    result = accelerate_launch(ROOT / "tests" / "distributed" / "cpu-deepspeed-zero3-2proc.yaml", "-m", "toolkit",
                               "train", str(bf16), "train.stages[0].batch_size=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "zero3" / "run_info.json").read_text())["precision"] == \
        "bf16 compute, fp32 master weights"

    last = sorted((tmp_path / "zero3" / "checkpoints").iterdir())[-1]
    saved = torch.load(last / "pytorch_model" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", map_location="cpu",
                       weights_only=False)["optimizer_state_dict"]
    assert saved["zero_stage"] == 3 and {t.dtype for t in saved["fp32_flat_groups"]} == {torch.float32}

    start = load_file(base / "model.safetensors")
    moved = {run: {k: (w.float() - start[k]).abs().mean().item() for k, w in final_weights(tmp_path / run).items()
                   if w.dim() == 2} for run in ("fp32", "zero3")}
    assert {w.dtype for w in final_weights(tmp_path / "zero3").values()} == {torch.bfloat16}
    ratios = {k: moved["zero3"][k] / moved["fp32"][k] for k in moved["fp32"]}
    assert 0.9 <= min(ratios.values()) and max(ratios.values()) <= 1.5, ratios


def _fsdp2_probe(tmp_path: Path, **env: str) -> dict[str, Any]:
    """``tests/distributed/fsdp2_masters_probe.py`` under configs/fsdp2.yaml's launch environment (plus ``env``)."""
    from tests.test_engines import launch_environment

    launch = tmp_path / "launch.json"
    launch.write_text(json.dumps({**launch_environment(ROOT / "configs" / "fsdp2.yaml"), **env}))
    result = subprocess.run([sys.executable, "-m", "tests.distributed.fsdp2_masters_probe", str(launch),
                             str(tmp_path / "store")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_fsdp2_shards_fp32_masters_computes_in_bf16_and_keeps_tied_embeddings(tmp_path: Path) -> None:
    """accelerate's FSDP2 preparation of the training objective under configs/fsdp2.yaml's settings, the runner's
    mixed precision and the toolkit's plugin (one gloo process): a bf16 model's parameters are sharded in float32,
    the forward runs in bf16, gradients arrive in float32, a step at lr 1e-5 moves them, and tied embeddings stay one
    tensor through ``fsdp_cpu_ram_efficient_loading``'s reload (``CausalLMObjective.tie_weights``; without it they
    came apart, and on an H200 the loss drifted 5e-2 from one process's in 5 steps)."""
    seen = _fsdp2_probe(tmp_path)
    assert seen["tied"]
    assert seen["parameters"] == seen["gradients"] == ["torch.float32"] and seen["sharded"]
    assert seen["logits"] == ["torch.bfloat16"]
    assert seen["moved"] >= 0.99 * seen["entries"]
