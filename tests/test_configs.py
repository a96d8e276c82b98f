"""Every launch config under configs/ loads in accelerate and uses only keys and values accelerate knows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import DistributedType

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
NESTED_PREFIX = {"fsdp_config": "fsdp_", "deepspeed_config": "", "dynamo_config": "dynamo_", "fp8_config": "fp8_"}
LAUNCH_OPTIONS = {action.dest: action for action in launch_command_parser()._actions}


def test_the_expected_configs_exist() -> None:
    names = {path.name for path in CONFIGS}
    assert {"single-gpu.yaml", "ddp.yaml", "fsdp2.yaml", "deepspeed-zero3-offload.yaml", "multi-node.yaml",
            "sequence-parallel-ulysses.yaml", "context-parallel-fsdp2.yaml", "cpu-ddp-2proc.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_every_key_is_a_launch_option(path: Path) -> None:
    config = load_config_from_file(str(path))  # rejects unknown top-level keys
    assert isinstance(config, ClusterConfig)
    raw = yaml.safe_load(path.read_text())
    for block, prefix in NESTED_PREFIX.items():
        for key, value in (raw.get(block) or {}).items():
            option = key if key.startswith(prefix) else prefix + key
            assert option in LAUNCH_OPTIONS, f"{path.name}: {block}.{key} is not an accelerate launch option"
            action = LAUNCH_OPTIONS[option]
            parsed = action.type(value) if action.type else value  # as the launcher reads it
            assert action.choices is None or parsed in action.choices, f"{path.name}: {block}.{key}: {value!r}"
    assert "parallelism_config" not in raw, "sequence parallel sizes come from the recipe's parallel block"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_consistent(path: Path) -> None:
    config = load_config_from_file(str(path))
    if config.distributed_type == DistributedType.NO:
        assert config.num_processes == 1
    else:
        assert config.num_processes >= 2 and config.num_processes % config.num_machines == 0
    if config.num_machines > 1:
        assert config.main_process_ip and config.main_process_port, "multi-node needs the main node's address"
    if config.distributed_type == DistributedType.FSDP:
        assert str(config.fsdp_config["fsdp_version"]) == "2"
    if config.distributed_type == DistributedType.DEEPSPEED:
        ds = config.deepspeed_config
        if "deepspeed_config_file" in ds:
            assert set(ds) <= {"deepspeed_config_file", "deepspeed_multinode_launcher", "zero3_init_flag"}
            json.loads((ROOT / ds["deepspeed_config_file"]).read_text())
        else:
            assert ds["zero_stage"] in (0, 1, 2, 3)


@pytest.mark.slow
def test_cpu_ddp_config_starts_two_gloo_processes(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\nfrom accelerate import Accelerator\n"
        "from toolkit.parallel.sequence import accelerator_kwargs\nfrom toolkit.recipe.schema import ParallelSpec\n"
        "a = Accelerator(**accelerator_kwargs(ParallelSpec()))\n"
        "open(f'{sys.argv[1]}/rank{a.process_index}', 'w').write("
        "f'{a.num_processes} {a.distributed_type.value} {a.state.backend}')\n")
    accelerate = Path(sys.executable).with_name("accelerate")
    result = subprocess.run([str(accelerate), "launch", "--config_file", str(ROOT / "configs/cpu-ddp-2proc.yaml"),
                             str(script), str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=180,
                            env={"PYTHONPATH": str(ROOT), "PATH": str(accelerate.parent)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert [(tmp_path / f"rank{i}").read_text() for i in (0, 1)] == ["2 MULTI_CPU gloo"] * 2
