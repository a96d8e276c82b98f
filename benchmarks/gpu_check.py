"""One prepared command that checks the single-GPU path (``make gpu-check``): six sections, each within its own
time budget, so the whole ends within the total (440 s on CUDA) and writes what it measured and checked into
``gpu-check.json`` and ``gpu-check.md`` (device, versions, every row and check, what was skipped and why),
rewritten after every row.

1. ``pytest -m gpu``;
2. the tiny recipe's first 10 steps (4 on the CPU) on the device and on the CPU from the same saved weights, in
   fp32: the first step's loss within 1e-5, every step's within 1e-3;
3. the DeepSpeed ZeRO-3 and FSDP2 launch configs on one process, the tiny recipe's first 5 steps (3 on the CPU) in
   bf16 from those weights: every step's loss within 1e-3 of one plain process's;
4. Llama-3-8B shape, random weights, LoRA r=16 on attention, bf16, one document per row: toolkit vs baseline
   tokens/s, MFU and peak memory at 8K, 32K, 64K, 128K (the baseline until it runs out of memory); each row names the
   attention it ran (``attention_used``: the toolkit's ``auto``, flash_attention_4 where flash-attn-4 is installed);
   after the 32K rows, ``python -m toolkit train`` on the toolkit row's rows (the same recipe, the rows as a
   token-id file): its ``metrics.jsonl`` median real tokens/s within 10% of the benchmark's;
5. the longest-context probe: one step of a 1- and a 2-layer model with the 8B per-layer shapes at 512K and 1M
   (while the time left allows; a length whose 2-layer step the plan says the card cannot hold, at its longest half
   that it can), extrapolated to 32 layers (GPU memory, host memory, step time), each beside the plan's figures,
   the plan within 10% of the extrapolated allocated peak; within what is left but section 6's seconds;
6. flash-attn-4 against PyTorch's varlen FA2: one attention layer of the 8B shape, forward and backward, one
   document per row at 32K and 128K, TFLOP/s of each (flash-attn-4 where installed: ``make wheelhouse-fa4``).

``--sections 1 4 5 6`` runs those sections only (the others are skips), and the seconds of the others go to section 5:
all six do not fit in one 8-minute call with the probe at 512K (about 150 s on an H200).

``--device cpu`` runs the same code at tiny shapes in two to three minutes (``make gpu-check DEVICE=cpu``); there the
CLI's speed against the benchmark's is reported, not asserted.

    python benchmarks/gpu_check.py --device cuda --out runs/gpu-check
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import gpu_check_engines as engines
from benchmarks import gpu_check_kernels as kernels
from benchmarks import gpu_check_probe as probe
from benchmarks import gpu_check_sections as sections
from benchmarks import gpu_check_training as training
from benchmarks.gpu_check_report import markdown
from benchmarks.harness import ROOT
from toolkit.environment import source_commit
from toolkit.errors import command_parser, output_folder
from toolkit.hub.reach import work_offline
from toolkit.output_paths import write_text
from toolkit.recipe.loading import load_recipe
from toolkit.run_folder import NO_COMMIT

NO_OFFLOAD = ("--offload_optimizer_device", "none", "--offload_param_device", "none")
"""ZeRO-3 with weights and optimizer on the GPU: DeepSpeed's CPU Adam, which offload needs, compiles for minutes at its
first use."""
ONE_GPU = load_recipe(ROOT / "recipes" / "llama3-8b-512k-lora-1gpu.yaml").train
"""Section 5 probes the placement and tiles of the one-GPU 512K recipe."""
PROFILES = {
    "cuda": sections.Profile(device="cuda", shape="llama3-8b", lengths=(8192, 32768, 65536, 131072),
                             cli_length=32768, timing_asserted=True, memory_asserted=True,
                             offload_from=131072, tiles=8,
                             tiles_from=65536, stage_overrides=(), compared_steps=10, engine_steps=5,
                             engines=(("DeepSpeed ZeRO-3", "configs/deepspeed-zero3-offload.yaml", NO_OFFLOAD),
                                      ("FSDP2", "configs/fsdp2.yaml", ())),
                             probe_lengths=(524288, 1048576), probe_layers=32,
                             probe_offload=int(ONE_GPU.activation_offload), probe_tiles=ONE_GPU.tiled_mlp or 1,
                             kernel_lengths=(32768, 131072), budgets=(60, 80, 50, 160), kernels_s=40, total_s=440,
                             min_row_s=30),
    "cpu": sections.Profile(device="cpu", shape="tiny", lengths=(256,), cli_length=256, timing_asserted=False,
                            memory_asserted=False, offload_from=256, tiles=2, tiles_from=256,
                            stage_overrides=("train.stages[0].batch_size=8",
                                             "model.train_tokenizer.corpus_documents=200"),
                            compared_steps=4, engine_steps=3,
                            engines=(("DeepSpeed ZeRO-3", "tests/distributed/cpu-deepspeed-zero3-2proc.yaml", ()),
                                     ("FSDP2", None, ())),
                            probe_lengths=(256, 512), probe_layers=4, probe_offload=4, probe_tiles=2,
                            kernel_lengths=(256, 512),
                            budgets=(15, 45, 45, 55), kernels_s=20, total_s=190, min_row_s=5),
}
ALL_SECTIONS = frozenset(range(1, 7))
_EXTRA_PACKAGES = ("pydantic", "pydantic-core", "datasets", "pyarrow", "fsspec", "liger-kernel", "deepspeed", "pytest",
                   "flash-attn-4", "nvidia-cutlass-dsl")


def _versions(found: dict[str, str]) -> dict[str, str]:
    for name in _EXTRA_PACKAGES:
        try:
            found.setdefault(name, version(name))
        except PackageNotFoundError:
            found.setdefault(name, "not installed")
    return found


def check(profile: sections.Profile, out: Path, chosen: frozenset[int] = ALL_SECTIONS) -> dict[str, Any]:
    """Run the ``chosen`` sections (the others are skips) within ``profile``'s budgets; the results as written to
    ``out``. The seconds of sections not chosen go to section 5."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    result: dict[str, Any] = {"mode": profile.device, "started": now, "budget_s": profile.total_s,
                              "commit": source_commit() or NO_COMMIT, "sections": []}

    def save() -> None:
        result["elapsed_s"] = time.monotonic() - started
        result["sections"] = [_section_json(s) for s in done]
        write_text(out / "gpu-check.json", json.dumps(result, indent=1))
        write_text(out / "gpu-check.md", markdown(result))

    done: list[sections.Section] = []
    try:
        facts = sections.device_facts()
    except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError) as exc:  # no device: said, and written
        result["failed"] = f"{type(exc).__name__}: {str(exc)[-400:]}"
        save()
        return result
    result.update(device=facts["device"], memory_gib=facts["memory_gib"], matmul_tflops=facts["matmul_tflops"],
                  allocator=facts["allocator"], versions=_versions(facts["versions"]))
    peak = facts["matmul_tflops"]
    profile = replace(profile, memory_gib=facts["memory_gib"])  # None on the CPU
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        plan = [("1. pytest -m gpu", profile.budgets[0], sections.gpu_tests),
                ("2. tiny recipe, first steps: device vs CPU, same weights", profile.budgets[1],
                 training.device_vs_cpu),
                ("3. ZeRO-3 and FSDP2 launches vs one process", profile.budgets[2], engines.engines),
                ("4. throughput and memory: toolkit vs baseline", profile.budgets[3],
                 lambda s, p, d: probe.throughput_against_plan(s, p, d, peak)),
                ("5. longest context: 1- and 2-layer probe extrapolated, against the plan", None,
                 probe.longest_context),
                ("6. attention kernels: flash-attn-4 vs varlen FA2", profile.kernels_s, kernels.attention_kernels)]
        for number, (name, budget, run) in enumerate(plan, 1):
            left = profile.total_s - (time.monotonic() - started)
            later = profile.kernels_s if 6 in chosen else 0
            section = sections.Section(name, max(left - later, 0) if budget is None else min(budget, left), save)
            done.append(section)
            if number not in chosen:
                section.skip(name.split(" ", 1)[1], "not among --sections")
                section.elapsed_s = 0.0
                continue
            try:
                run(section, profile, scratch)
            except Exception as exc:  # a broken section is a result; the next one still runs
                section.notes.append(f"failed: {type(exc).__name__}: {str(exc)[-400:]}")
            section.elapsed_s = time.monotonic() - section.started
            save()
    return result


def _section_json(section: sections.Section) -> dict[str, Any]:
    elapsed = section.elapsed_s if section.elapsed_s is not None else time.monotonic() - section.started
    return {"name": section.name, "budget_s": section.budget_s, "elapsed_s": elapsed, "rows": section.rows,
            "checks": section.checks, "skipped": section.skipped, "notes": section.notes}


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__, "benchmarks/gpu_check.py")
    parser.add_argument("--device", choices=sorted(PROFILES), default="cuda")
    parser.add_argument("--out", type=output_folder, default=Path("runs/gpu-check"))
    parser.add_argument("--sections", type=int, nargs="+", choices=sorted(ALL_SECTIONS), default=sorted(ALL_SECTIONS),
                        help="the sections to run (default: all); the others are skips, their seconds go to section 5")
    args = parser.parse_args(argv)
    work_offline()  # all it reads is local and the GPU machine reaches no network: its commands need not ask the Hub
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # `timeout`: children stopped too
    result = check(PROFILES[args.device], args.out, frozenset(args.sections))
    print(markdown(result))
    if "failed" in result:
        sys.exit(1)


if __name__ == "__main__":
    main()
