"""One prepared command that measures the single-GPU path (``make gpu-check``): four sections, each within its
own time budget, so the whole ends within the total (480 s on CUDA) and writes what it measured into
``gpu-check.json`` and ``gpu-check.md`` (device, versions, every row, what was skipped and why), rewritten after
every row.

1. ``pytest -m gpu``;
2. the tiny recipe's first stage on the device and on the CPU, loss curves compared;
3. Llama-3-8B shape, random weights, LoRA r=16 on attention, bf16, packed rows: toolkit vs baseline tokens/s,
   MFU and peak memory at 8K, 32K, 64K, 128K (the baseline until it runs out of memory);
4. the longest LoRA context that trains one step, doubling from 128K with checkpointing, CPU offload, tiled
   MLP and chunked loss, within what is left.

``--device cpu`` runs the same code at tiny shapes in under a minute (``make gpu-check DEVICE=cpu``).

    python benchmarks/gpu_check.py --device cuda --out runs/gpu-check
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import gpu_check_sections as sections  # noqa: E402
from benchmarks.gpu_check_report import markdown  # noqa: E402

PROFILES = {
    "cuda": sections.Profile(device="cuda", shape="llama3-8b", lengths=(8192, 32768, 65536, 131072),
                             offload_from=131072, tiles=8, tiles_from=65536, stage_overrides=(),
                             search_limit=1 << 21, budgets=(60, 75, 210), total_s=465, min_row_s=30),
    "cpu": sections.Profile(device="cpu", shape="tiny", lengths=(256,), offload_from=256, tiles=2, tiles_from=256,
                            stage_overrides=("train.max_steps=10", "train.stages[0].batch_size=8",
                                             "model.train_tokenizer.corpus_documents=200"),
                            search_limit=512, budgets=(12, 18, 22), total_s=57, min_row_s=5),
}
_EXTRA_PACKAGES = ("pydantic", "pydantic-core", "datasets", "pyarrow", "fsspec", "liger-kernel", "pytest")


def _versions(found: dict[str, str]) -> dict[str, str]:
    for name in _EXTRA_PACKAGES:
        try:
            found.setdefault(name, version(name))
        except PackageNotFoundError:
            found.setdefault(name, "not installed")
    return found


def check(profile: sections.Profile, out: Path) -> dict[str, Any]:
    """Run the four sections within ``profile``'s budgets; the results as written to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result: dict[str, Any] = {"mode": profile.device, "started": now, "budget_s": profile.total_s, "sections": []}

    def save() -> None:
        result["elapsed_s"] = time.monotonic() - started
        result["sections"] = [_section_json(s) for s in done]
        (out / "gpu-check.json").write_text(json.dumps(result, indent=1))
        (out / "gpu-check.md").write_text(markdown(result))

    done: list[sections.Section] = []
    facts = sections.device_facts()
    result.update(device=facts["device"], memory_gib=facts["memory_gib"], matmul_tflops=facts["matmul_tflops"],
                  versions=_versions(facts["versions"]))
    peak = facts["matmul_tflops"]
    measured: list[dict[str, Any]] = []
    plan = [("1. pytest -m gpu", profile.budgets[0], sections.gpu_tests),
            ("2. tiny recipe, first stage: device vs CPU", profile.budgets[1], sections.tiny_stage),
            ("3. throughput and memory: toolkit vs baseline", profile.budgets[2],
             lambda s, p, d: sections.throughput(s, p, d, peak)),
            ("4. longest LoRA context, one step", None,
             lambda s, p, d: sections.longest_context(s, p, d, peak, measured))]
    with tempfile.TemporaryDirectory() as scratch:
        for name, budget, run in plan:
            left = profile.total_s - (time.monotonic() - started)
            section = sections.Section(name, min(budget or left, left), save)
            done.append(section)
            try:
                run(section, profile, Path(scratch))
            except Exception as exc:  # a broken section is a result; the next one still runs
                section.notes.append(f"failed: {type(exc).__name__}: {str(exc)[-400:]}")
            section.elapsed_s = time.monotonic() - section.started
            measured.extend(section.rows)
            save()
    return result


def _section_json(section: sections.Section) -> dict[str, Any]:
    elapsed = section.elapsed_s if section.elapsed_s is not None else time.monotonic() - section.started
    return {"name": section.name, "budget_s": section.budget_s, "elapsed_s": elapsed, "rows": section.rows,
            "skipped": section.skipped, "notes": section.notes}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=sorted(PROFILES), default="cuda")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    args = parser.parse_args(argv)
    result = check(PROFILES[args.device], args.out)
    print(markdown(result))


if __name__ == "__main__":
    main()
