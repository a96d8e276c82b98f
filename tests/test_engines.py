"""What accelerate builds from each launch config under configs/, and what toolkit.parallel.engines hands it.

The environment of the training processes is derived with accelerate's own launcher code, as
``accelerate launch --config_file F`` would (see ``launch_environment``); ``engine_kwargs`` then runs in that
environment. Nothing here starts a process group or a GPU engine.
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import torch
import yaml
from accelerate import Accelerator
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType
from accelerate.utils.launch import (
    prepare_deepspeed_cmd_env,
    prepare_multi_gpu_env,
    prepare_simple_launcher_cmd_env,
)

from toolkit.errors import UserError
from toolkit.memory.optimizers import build_optimizer
from toolkit.parallel.engines import (
    STALE_BUILD_LOCK_S,
    backward,
    engine_kwargs,
    optimizer_offloaded,
    start_stage,
    warn_of_stale_build_locks,
)
from toolkit.recipe.schema import Recipe, TrainSpec

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))

LAUNCHER_PREFIXES = ("ACCELERATE_", "FSDP_", "PARALLELISM_CONFIG_", "MEGATRON_LM_")
TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK")
DEVICE_VISIBILITY = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")
"""Not applied in-process: device visibility is not under test, and once CUDA has started in this pytest process
a change cannot be undone for the tests that follow."""

FIRST = {"batch_size": 3, "grad_accum": 4}
SECOND = {"batch_size": 1, "grad_accum": 2}
ULYSSES_DEGREE = 8
CLIPPING = 0.5


def _recipe(*, ulysses: bool = False, max_grad_norm: float | None = CLIPPING, **train: Any) -> Recipe:
    """Two stages whose batch size and accumulation differ (under Ulysses one micro-batch size, as the schema asks)."""
    second = dict(SECOND, batch_size=FIRST["batch_size"]) if ulysses else SECOND
    recipe: dict[str, Any] = {
        "name": "engines-test", "model": {"name_or_path": "meta-llama/Meta-Llama-3-8B"},
        "train": {"stages": [{"seq_len": 1024, "max_steps": 1, **FIRST}, {"seq_len": 4096, "max_steps": 1, **second}],
                  "max_grad_norm": max_grad_norm, "betas": [0.9, 0.95], "weight_decay": 0.1, **train}}
    if ulysses:
        recipe["parallel"] = {"sequence": "ulysses", "degree": ULYSSES_DEGREE}
    return Recipe.model_validate(recipe)


@pytest.fixture(autouse=True)
def restored_environ() -> Iterator[None]:
    """The process environment exactly as before each test (accelerate's plugins may write to it themselves)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def reset_accelerate_state() -> Iterator[None]:
    """No AcceleratorState or GradientState survives a test that built an Accelerator."""
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _clear_launcher_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(LAUNCHER_PREFIXES) or name in TORCHRUN_VARS:
            monkeypatch.delenv(name)


def launch_environment(config: Path) -> dict[str, str]:
    """The variables that ``accelerate launch --config_file config`` adds for rank 0 of its training processes.

    The steps of ``accelerate.commands.launch.launch_command``, without starting anything: parse, then
    ``_validate_launch_command`` (reads the config file into the arguments), then the launcher's environment:
    ``prepare_deepspeed_cmd_env`` (after setting ``args.deepspeed_fields_from_accelerate_config``, which
    ``launch_command`` does inline), ``prepare_multi_gpu_env`` (FSDP and multi-GPU) or
    ``prepare_simple_launcher_cmd_env`` (one process). torchrun, which the first two hand the arguments to, then
    gives each process WORLD_SIZE = nproc_per_node * nnodes, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE; those are
    added here for rank 0. No extra arguments are needed on CPU. The launchers' NCCL_P2P/IB switches for RTX 4000
    cards are left out. Only variables that differ from the current environment are returned.
    """
    args = launch_command_parser().parse_args(["--config_file", str(config), "train.py"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "port already in use" and the like: nothing is bound here
        args, defaults, mixed_precision_from_config = _validate_launch_command(args)
        if args.use_deepspeed:
            fields = list(defaults.deepspeed_config) if defaults else []
            args.deepspeed_fields_from_accelerate_config = ",".join(
                fields + (["mixed_precision"] if mixed_precision_from_config else []))
            _, env = prepare_deepspeed_cmd_env(args)
        elif args.use_fsdp or args.multi_gpu:
            env = prepare_multi_gpu_env(args)
        else:
            _, env = prepare_simple_launcher_cmd_env(args)
    added = {name: value for name, value in env.items() if os.environ.get(name) != value}
    if args.use_deepspeed or args.use_fsdp or args.multi_gpu:  # torchrun starts the processes
        per_node = int(args.nproc_per_node)
        added |= {"WORLD_SIZE": str(per_node * int(getattr(args, "nnodes", None) or 1)), "RANK": "0", "LOCAL_RANK": "0",
                  "LOCAL_WORLD_SIZE": str(per_node)}
    return added


def apply_launch(monkeypatch: pytest.MonkeyPatch, config: Path) -> dict[str, str]:
    """Set the launch environment of ``config`` in this process (no launcher variable from elsewhere left)."""
    _clear_launcher_env(monkeypatch)
    env = launch_environment(config)
    for name, value in env.items():
        if name not in DEVICE_VISIBILITY:
            monkeypatch.setenv(name, value)
    return env


def _autos(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _autos(item, f"{path}.{key}" if path else key)]
    if isinstance(value, list):
        return [found for i, item in enumerate(value) for found in _autos(item, f"{path}[{i}]")]
    return [path] if value == "auto" else []


def _write_launch_config(folder: Path, base: str, name: str, **deepspeed: Any) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / base).read_text())
    raw["deepspeed_config"].update(deepspeed)
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _cases() -> list[Any]:
    cases = []
    for path in CONFIGS:
        cases.append(pytest.param(path, False, id=path.name))
        if yaml.safe_load(path.read_text())["distributed_type"] == "DEEPSPEED":
            cases.append(pytest.param(path, True, id=f"{path.name}-ulysses"))
    return cases


# 1. Every launch config: the environment accelerate gives the processes, and what engine_kwargs builds in it.

@pytest.mark.parametrize(("config", "ulysses"), _cases())
def test_engine_kwargs_under_each_launch_config(config: Path, ulysses: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = yaml.safe_load(config.read_text())
    env = apply_launch(monkeypatch, config)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    assert processes == raw["num_processes"], "the launcher starts as many processes as the config says"

    kwargs = engine_kwargs(_recipe(ulysses=ulysses), torch.bfloat16, os.environ)

    accumulation = kwargs["gradient_accumulation_plugin"]
    assert accumulation.num_steps == FIRST["grad_accum"] and accumulation.sync_with_dataloader is False
    kind = raw["distributed_type"]
    if kind == "DEEPSPEED":
        assert set(kwargs) == {"gradient_accumulation_plugin", "deepspeed_plugin"}
        assert accumulation.sync_each_batch is False
        _check_deepspeed(kwargs["deepspeed_plugin"], raw, processes, ulysses)
        if config.name == "deepspeed-zero3-offload.yaml":  # so that the offload branch is not vacuous
            assert optimizer_offloaded(kwargs["deepspeed_plugin"])
            assert env["ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"] == "cpu"
    elif kind == "FSDP":
        assert set(kwargs) == {"gradient_accumulation_plugin", "fsdp_plugin"}
        assert accumulation.sync_each_batch is True  # gradients reduce-scattered after every micro-batch
        plugin = kwargs["fsdp_plugin"]
        assert plugin.fsdp_version == 2 and env["FSDP_VERSION"] == "2"
        policy = plugin.mixed_precision_policy
        assert (policy.param_dtype, policy.reduce_dtype, policy.output_dtype) == (torch.bfloat16, torch.float32, None)
    else:
        assert kind in ("NO", "MULTI_GPU")
        assert set(kwargs) == {"gradient_accumulation_plugin"}
        assert accumulation.sync_each_batch is False
        assert "ACCELERATE_USE_DEEPSPEED" not in env and "ACCELERATE_USE_FSDP" not in env


def _check_deepspeed(plugin: Any, raw: dict[str, Any], processes: int, ulysses: bool) -> None:
    config = plugin.deepspeed_config
    assert _autos(config) == [], f"'auto' left in the DeepSpeed config at {_autos(config)}"
    assert config["train_micro_batch_size_per_gpu"] == FIRST["batch_size"]
    assert config["gradient_accumulation_steps"] == plugin.gradient_accumulation_steps == FIRST["grad_accum"]
    data_parallel = processes // ULYSSES_DEGREE if ulysses else processes
    assert config["train_batch_size"] == FIRST["batch_size"] * FIRST["grad_accum"] * data_parallel
    # The recipe's clipping, whatever the launch config says (ACCELERATE_GRADIENT_CLIPPING).
    assert config["gradient_clipping"] == plugin.gradient_clipping == CLIPPING
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    offloads = raw["deepspeed_config"].get("offload_optimizer_device", "none") != "none"
    assert optimizer_offloaded(plugin) is offloads
    assert (config.get("zero_force_ds_cpu_optimizer", True) is False) is offloads
    if raw["deepspeed_config"].get("zero_stage") == 3:
        assert config["zero_optimization"]["stage"] == 3
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    # What the Accelerator then does with the recipe's precision ("bf16" on a GPU, "no" on CPU) changes nothing.
    for precision in ("bf16", "no"):
        before = copy.deepcopy(config)
        plugin.set_mixed_precision(precision)
        assert plugin.deepspeed_config == before


@pytest.mark.parametrize(("stage", "offload"), [(3, "none"), (2, "none"), (2, "cpu")])
def test_deepspeed_variants_without_offload_or_zero3(stage: int, offload: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the ZeRO-3 config with another stage or no offload: DeepSpeed keeps its own CPU-optimizer check,
    and the gather flag is ZeRO-3's alone."""
    config = _write_launch_config(tmp_path, "deepspeed-zero3-offload.yaml", "variant.yaml", zero_stage=stage,
                                  offload_optimizer_device=offload, offload_param_device="none",
                                  zero3_init_flag=stage == 3, zero3_save_16bit_model=stage == 3)
    apply_launch(monkeypatch, config)
    plugin = engine_kwargs(_recipe(), torch.bfloat16, os.environ)["deepspeed_plugin"]
    config_dict = plugin.deepspeed_config
    assert _autos(config_dict) == []
    assert optimizer_offloaded(plugin) is (offload != "none")
    assert ("zero_force_ds_cpu_optimizer" in config_dict) is (offload != "none")
    gather = config_dict["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save")
    assert gather is (stage == 3)


def test_deepspeed_without_clipping_and_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    apply_launch(monkeypatch, ROOT / "configs/deepspeed-zero3-offload.yaml")
    plugin = engine_kwargs(_recipe(max_grad_norm=None), torch.float32, os.environ)["deepspeed_plugin"]
    config = plugin.deepspeed_config
    assert config["gradient_clipping"] == plugin.gradient_clipping == 0.0  # DeepSpeed: 0 is no clipping
    assert config["bf16"]["enabled"] is False and config["fp16"]["enabled"] is False
    plugin.set_mixed_precision("no")  # what the runner passes for fp32
    assert config["bf16"]["enabled"] is False and _autos(config) == []


# 2. Launches the toolkit refuses.

def test_fsdp_version_1_launch_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = yaml.safe_load((ROOT / "configs/fsdp2.yaml").read_text())
    raw["fsdp_config"]["fsdp_version"] = 1
    config = tmp_path / "fsdp1.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = apply_launch(monkeypatch, config)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "1"
    with pytest.raises(UserError, match="fsdp_version"):
        engine_kwargs(_recipe(), torch.bfloat16, os.environ)


@pytest.mark.parametrize("section", ["optimizer", "scheduler"])
def test_deepspeed_config_file_with_its_own_optimizer_or_scheduler_is_a_user_error(
        section: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, section: {"type": "WarmupLR", "params": {}}}))
    _clear_launcher_env(monkeypatch)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    with pytest.raises(UserError) as error:
        engine_kwargs(_recipe(), torch.bfloat16, os.environ)
    assert str(path) in str(error.value) and repr(section) in str(error.value)
    assert f"train.{section}" in str(error.value)


def test_deepspeed_config_file_autos_are_filled_from_the_recipe(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A config file in the usual Hugging Face style ("auto" for what the trainer knows) gets the recipe's values."""
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps({
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
        "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}))
    _clear_launcher_env(monkeypatch)
    for name, value in {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path),
                        "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    plugin = engine_kwargs(_recipe(), torch.bfloat16, os.environ)["deepspeed_plugin"]
    config = plugin.deepspeed_config
    assert _autos(config) == []
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["train_batch_size"], config["gradient_clipping"]) == (3, 4, 3 * 4 * 2, CLIPPING)
    assert config["zero_force_ds_cpu_optimizer"] is False
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


# 3. The optimizer under DeepSpeed with the optimizer state offloaded.

def _train(**fields: Any) -> TrainSpec:
    return TrainSpec.model_validate({"stages": [{"seq_len": 64, "max_steps": 1}], "betas": [0.9, 0.95],
                                     "weight_decay": 0.1, **fields})


@pytest.mark.slow  # the first DeepSpeedCPUAdam JIT-compiles its CPU op (~45 s; cached in ~/.cache/torch_extensions)
def test_offloaded_optimizer_is_deepspeed_cpu_adam_in_adamw_mode() -> None:
    pytest.importorskip("deepspeed")
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    torch.manual_seed(0)
    start = torch.randn(5, 7)
    grads = [torch.randn(5, 7) for _ in range(2)]
    ours = torch.nn.Parameter(start.clone())
    reference = torch.nn.Parameter(start.clone())
    optimizer = build_optimizer([ours], _train(), lr=1e-2, offloaded=True)
    assert isinstance(optimizer, DeepSpeedCPUAdam)
    assert optimizer.adam_w_mode is True  # decoupled weight decay, as torch AdamW
    group = optimizer.param_groups[0]
    assert (tuple(group["betas"]), group["weight_decay"], group["lr"]) == ((0.9, 0.95), 0.1, 1e-2)
    torch_adamw = torch.optim.AdamW([reference], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for grad in grads:  # two steps: the bias corrections and the moments as well as the decay
        ours.grad, reference.grad = grad.clone(), grad.clone()
        optimizer.step()
        torch_adamw.step()
        torch.testing.assert_close(ours.detach(), reference.detach(), atol=1e-6, rtol=0)
    assert not torch.equal(ours.detach(), start)


@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_optimizer_with_offload_is_a_user_error(name: str) -> None:
    with pytest.raises(UserError, match="train.optimizer"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], _train(optimizer=name), lr=1e-3, offloaded=True)


# 4. backward and start_stage.

def _stand_in(kind: DistributedType, steps: int = 4) -> SimpleNamespace:
    """An accelerator's distributed_type and gradient_accumulation_steps, with a backward that records its call."""
    calls: list[tuple[torch.Tensor, dict[str, Any]]] = []
    return SimpleNamespace(distributed_type=kind, gradient_accumulation_steps=steps, calls=calls,
                           backward=lambda loss, **kwargs: calls.append((loss, kwargs)))


def test_backward_under_deepspeed_turns_off_the_engines_division() -> None:
    accelerator = _stand_in(DistributedType.DEEPSPEED)
    loss = torch.tensor(2.5)
    backward(cast(Accelerator, accelerator), loss)
    [(passed, kwargs)] = accelerator.calls
    assert passed is loss and kwargs == {"scale_wrt_gas": False}


@pytest.mark.parametrize("kind", [DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU,
                                  DistributedType.FSDP])
def test_backward_elsewhere_undoes_accelerates_division(kind: DistributedType) -> None:
    accelerator = _stand_in(kind)
    backward(cast(Accelerator, accelerator), torch.tensor(2.5))
    [(passed, kwargs)] = accelerator.calls
    assert kwargs == {} and passed.item() == 2.5 * 4


def test_start_stage_on_a_real_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    """On accelerate's own Accelerator (one CPU process): the accumulation count switches and the count of
    micro-batches restarts, and ``backward`` leaves the gradient of the loss as given."""
    _clear_launcher_env(monkeypatch)
    accelerator = Accelerator(cpu=True, **engine_kwargs(_recipe(), torch.float32, os.environ))
    assert accelerator.distributed_type == DistributedType.NO
    model = accelerator.prepare(torch.nn.Linear(3, 1))

    def syncs(micro_batches: int) -> list[bool]:
        flags = []
        for _ in range(micro_batches):
            with accelerator.accumulate(model):
                flags.append(accelerator.sync_gradients)
        return flags

    assert accelerator.gradient_accumulation_steps == FIRST["grad_accum"]
    assert syncs(6) == [False, False, False, True, False, False]  # stage 1 ends mid-way through a step
    start_stage(accelerator, SECOND["grad_accum"])
    assert accelerator.gradient_accumulation_steps == SECOND["grad_accum"] and accelerator.step == 0
    assert syncs(4) == [False, True, False, True]

    inputs = torch.ones(2, 3)
    with accelerator.accumulate(model):
        loss = model(inputs).sum()
        backward(accelerator, loss)
    expected = torch.autograd.grad(model(inputs).sum(), model.weight)[0]
    assert model.weight.grad is not None
    torch.testing.assert_close(model.weight.grad, expected)


def test_a_build_lock_left_by_a_stopped_build_is_named_before_deepspeed_hangs_on_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """torch's extension builds wait for a lock file to go; a build stopped midway leaves it behind."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale, fresh = tmp_path / "py311_cpu" / "cpu_adam" / "lock", tmp_path / "py311_cpu" / "fused_adam" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    then = time.time() - STALE_BUILD_LOCK_S - 120
    os.utime(stale, (then, then))
    with caplog.at_level("WARNING", logger="toolkit.parallel.engines"):
        warn_of_stale_build_locks()
    assert [record.getMessage() for record in caplog.records] == [
        f"{stale}: left 12 minutes ago by a build of torch extension cpu_adam that was stopped midway (unless "
        "another run is building it now); DeepSpeed waits on it for ever: delete it"]
