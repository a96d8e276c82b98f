"""What fp8 activation offload does to training: one stage of a recipe trained with every layer's checkpointed input
offloaded as computed and as fp8 (``train.activation_offload_dtype``), on several seeds, through
``python -m toolkit train`` (the user's loop), each seed's two loss curves compared from ``metrics.jsonl``.

fp8 storage rounds each offloaded input to float8 e4m3 with one scale per tensor. The forward is exact, so step 1's
loss is the same; the backward recomputes each layer from the rounded input, so the gradients, and every step after
the first, differ. The size of that difference is set against the difference a change of seed makes.

    python benchmarks/fp8_offload_loss.py                                  # the tiny recipe's first stage, 50 steps
    python benchmarks/fp8_offload_loss.py --seeds 0 1 2 3 4 --set model.precision=bf16

Writes ``OUT/fp8-offload-loss.json``, ``.md`` and ``.png`` (loss curves, and fp8 minus as computed) and prints the
table; the runs are ``OUT/seed-S-DTYPE/``.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean, stdev

import yaml
from matplotlib.figure import Figure
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from toolkit.errors import UserError, command_parser, exit_on_user_error, output_folder, positive_int, seed_number
from toolkit.evals.plots import finish_axes, save_figure
from toolkit.evals.stats import mean_interval
from toolkit.formatting.blocks import markdown_table
from toolkit.output_paths import write_text
from toolkit.recipe.loading import load_recipe
from toolkit.recipe.one_stage import one_stage, stage_index, stage_names
from toolkit.run_folder import read_metrics

DTYPES = ("native", "fp8")
FINAL_STEPS = 10
"""The final loss is the mean over this many last steps (one step's loss is noisy)."""


@dataclass(frozen=True)
class SeedResult:
    seed: int
    native: list[float]
    fp8: list[float]

    @property
    def first_step_gap(self) -> float:
        return abs(self.fp8[0] - self.native[0])

    def final(self, dtype: str) -> float:
        return mean(getattr(self, dtype)[-FINAL_STEPS:])

    @property
    def final_gap(self) -> float:
        return self.final("fp8") - self.final("native")

    @property
    def mean_relative_gap(self) -> float:
        """Mean over steps of |fp8 - native| / native."""
        return mean(abs(b - a) / a for a, b in zip(self.native, self.fp8, strict=True))


def stage_overrides(recipe: str | Path, stage: str, steps: int) -> list[str]:
    """Overrides that train only ``stage`` (a name or an index) of ``recipe`` for ``steps`` steps, every step logged,
    with every layer's input offloaded and no evaluation."""
    whole = load_recipe(recipe)
    index = stage_index(whole.train, stage)
    if index is None:
        raise UserError(f"--stage {stage}: {recipe} has the stages {stage_names(whole.train)}")
    alone = one_stage(whole, index, steps)
    alone.train = alone.train.model_copy(update={"max_steps": None, "save_every": None,
                                                 "gradient_checkpointing": True, "activation_offload": True})
    return [f"{block}={_flow(getattr(alone, block))}" for block in ("train", "eval", "logging")]


def _flow(block: BaseModel) -> str:
    """``block``'s settings other than the defaults, as one line of flow YAML."""
    return yaml.safe_dump(block.model_dump(mode="json", exclude_defaults=True), default_flow_style=True,
                          width=math.inf).strip()


def train(recipe: str | Path, overrides: list[str], run: Path) -> list[float]:
    """One run of ``python -m toolkit train`` into ``run`` (made afresh); its loss at every step."""
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    log = run.parent / f"{run.name}.log"
    with log.open("w") as out:
        code = subprocess.call([sys.executable, "-m", "toolkit", "train", str(recipe), *overrides,
                                f"output.dir={run}"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        raise SystemExit(f"{run.name}: python -m toolkit train exited {code} ({log}): {' '.join(tail)}")
    return [r["loss"] for r in read_metrics(run)]


def summary(results: list[SeedResult]) -> dict:
    gaps = [r.final_gap for r in results]
    finals = [r.final("native") for r in results]
    return {"seeds": len(results), "first_step_gap_max": max(r.first_step_gap for r in results),
            "final_gap_mean": mean(gaps), "final_gap_ci95": mean_interval(gaps),
            "seed_spread_final": stdev(finals), "mean_relative_gap_max": max(r.mean_relative_gap for r in results)}


def table(results: list[SeedResult], totals: dict) -> str:
    header = ["seed", "step 1, as computed", "step 1, fp8", "final, as computed", "final, fp8", "fp8 - as computed",
              "mean abs relative gap"]
    rows = [[str(r.seed), f"{r.native[0]:.4f}", f"{r.fp8[0]:.4f}", f"{r.final('native'):.4f}", f"{r.final('fp8'):.4f}",
             f"{r.final_gap:+.4f}", f"{r.mean_relative_gap:.2%}"] for r in results]
    low, high = totals["final_gap_ci95"]
    gap = (f"Final loss (mean of the last {FINAL_STEPS} steps), fp8 - as computed: "
           f"{totals['final_gap_mean']:+.4f}, 95% interval [{low:+.4f}, {high:+.4f}] over {totals['seeds']} seeds; "
           f"the seeds' own spread of the final loss (standard deviation, as computed): "
           f"{totals['seed_spread_final']:.4f}. "
           f"Step 1's loss differs by at most {totals['first_step_gap_max']:.2e}.")
    return markdown_table(header, rows) + "\n\n" + gap


def plot(results: list[SeedResult], title: str, path: Path) -> Path:
    fig = Figure(figsize=(11, 4), layout="constrained")
    curves, gaps = fig.subplots(1, 2)
    for i, r in enumerate(results):
        color = f"C{i}"
        steps = range(1, len(r.native) + 1)
        curves.plot(steps, r.native, color=color, label=f"seed {r.seed}, as computed")
        curves.plot(steps, r.fp8, color=color, linestyle="--", label=f"seed {r.seed}, fp8")
        gaps.plot(steps, [b - a for a, b in zip(r.native, r.fp8, strict=True)], color=color, label=f"seed {r.seed}")
    gaps.axhline(0, color="grey", linewidth=0.8)
    curves.legend(fontsize=7)
    gaps.legend(fontsize=7)
    finish_axes(curves, "step", "training loss", title)
    finish_axes(gaps, "step", "loss, fp8 - as computed", "the gap, step by step")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__, "benchmarks/fp8_offload_loss.py")
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes/tiny-passkey.yaml")
    parser.add_argument("--stage", default="0", help="stage name or index (default: the first)")
    parser.add_argument("--steps", type=positive_int, default=50)
    parser.add_argument("--seeds", type=seed_number, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="more recipe overrides, e.g. model.precision=bf16")
    parser.add_argument("--out", type=output_folder, default=REPO / "runs/fp8-offload-loss")
    args = parser.parse_args(argv)
    if len(args.seeds) < 2:
        parser.error("--seeds: at least two, for the interval and the seeds' spread")
    with exit_on_user_error():
        base = stage_overrides(args.recipe, args.stage, args.steps) + args.overrides
        load_recipe(args.recipe, base)  # every --set checked before the first of the runs
    results = []
    for seed in args.seeds:
        losses = {dtype: train(args.recipe, [*base, f"seed={seed}", f"train.activation_offload_dtype={dtype}"],
                               args.out / f"seed-{seed}-{dtype}") for dtype in DTYPES}
        results.append(SeedResult(seed, losses["native"], losses["fp8"]))
        print(f"seed {seed}: final loss {results[-1].final('native'):.4f} as computed, "
              f"{results[-1].final('fp8'):.4f} fp8", flush=True)
    totals = summary(results)
    title = f"{args.recipe.name}, stage {args.stage}, {args.steps} steps, every layer offloaded"
    title += "".join(f", {override}" for override in args.overrides)
    text = table(results, totals)
    write_text(args.out / "fp8-offload-loss.md", f"{title}\n\n{text}\n")
    write_text(args.out / "fp8-offload-loss.json", json.dumps(
        {"recipe": str(args.recipe), "stage": args.stage, "steps": args.steps, "overrides": args.overrides,
         "summary": totals, "seeds": [asdict(r) for r in results]}, indent=2))
    plot(results, title, args.out / "fp8-offload-loss.png")
    print(text)


if __name__ == "__main__":
    main()
