"""What the GPU demo (``benchmarks/gpu_demo.py``) writes: its checks, ``gpu-demo.md``, and the one results file
that brings the run back; and what a demo stopped by its time limit leaves."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from typing import Any

from toolkit.evals.stats import Comparison

RESULTS = "gpu-demo-results.tar.gz"
"""What the demo brings back besides ``gpu-demo.md``/``.json``, the run's ``report.md`` and the logs: a GPU machine
may give back only a few files, none deep in folders."""
REFERENCE = "zero-shot-yarn"
"""The zero-shot YaRN x4 reference's evaluation folder, inside the run folder."""
SHORT_PERPLEXITY_MAX = 1.05
"""The extended model's short-context perplexity at most 5% above the base model's."""


def _documents(entry: dict[str, Any]) -> str:
    """``, n=8 documents`` where the entry kept its documents' losses."""
    n = len(entry.get("document_mean_loss", ()))
    return f", n={n} document{'s' if n > 1 else ''}" if n else ""


def peak_memory_gib(run_dir: Path) -> float | None:
    """The most memory training held (GPU tensors; on CPU the peak resident set), from the run's metrics."""
    from toolkit.run_folder import read_metrics

    return max((m["peak_memory_gib"] for m in read_metrics(run_dir) if "peak_memory_gib" in m), default=None)


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": passed, "detail": detail}


def checks(run_dir: Path, heldout_suite: str, short_suite: str, reference: Path) -> tuple[str, list[dict[str, Any]]]:
    """The verdict's text, and every check: the verdict's, then those it cannot express (``heldout_suite``: the
    suite file of the held-out perplexity at the extended length; ``short_suite``: the suite name of the short-context
    ``passkey`` and ``heldout`` tasks)."""
    from toolkit.errors import UserError
    from toolkit.evals.perplexity import loss_from, loss_ratio
    from toolkit.evals.run_results import check_entries, read_run
    from toolkit.report.cells import compare
    from toolkit.report.verdict import compute_verdict
    from toolkit.run_folder import read_suites

    run = read_run(run_dir)
    try:
        verdict = compute_verdict(run)
        text, found = verdict.text(), [_check(c.name, c.passed, c.detail) for c in verdict.checks]
    except UserError as exc:
        text, found = f"Verdict not computed: {exc}", [_check("verdict", False, str(exc))]
    base, final = run.reference or "base", run.final or "base"
    longest = run.info.stages[-1].seq_len
    assert longest is not None  # the runner records every stage's length
    heldout, far = Path(heldout_suite).stem, longest // 2
    after = run.entry(final, heldout, "heldout") or {}
    zero_shot = read_suites(reference, check_entries).get(heldout, {}).get("tasks", {}).get("heldout", {})
    name = f"held-out loss at positions >= {far} below zero-shot YaRN x4"
    if (ratio := loss_ratio(after, zero_shot, far)) is not None:
        new, old = (loss_from(entry["loss_by_bucket"], far) for entry in (after, zero_shot))
        found.append(_check(name, new < old, f"{new:.3f} vs {old:.3f}: perplexity {ratio.format(3)} x the "
                            f"reference's{_documents(after)}"))
    else:
        found.append(_check(name, False, f"no {heldout}/heldout results for {final} or the reference"))
    short = [run.entry(tag, short_suite, "heldout") or {} for tag in (base, final)]
    name = "short held-out perplexity within 5% of the base"
    if (ratio := loss_ratio(short[1], short[0])) is not None:
        found.append(_check(name, ratio.value <= SHORT_PERPLEXITY_MAX,
                            f"{ratio.format(3)} x the base's (<= {SHORT_PERPLEXITY_MAX}){_documents(short[1])}"))
    else:
        found.append(_check(name, False, f"no {short_suite}/heldout results for {base} and {final}"))
    passkey = [run.entry(tag, short_suite, "passkey") or {} for tag in (base, final)]
    name = "short chat passkey no lower than the base"
    if (difference := compare(run, Comparison.difference, (final, passkey[1]), (base, passkey[0]))) is not None:
        found.append(_check(name, difference.value >= 0, f"{passkey[1]['score']:.2f} vs {passkey[0]['score']:.2f}: "
                            f"{difference.format()}"))
    else:
        found.append(_check(name, False, f"no {short_suite}/passkey results for {base} and {final}"))
    return text, found


def markdown(result: dict[str, Any]) -> str:
    """``gpu-demo.md``: what ran where, every check, the verdict."""
    from toolkit.formatting.numbers import fmt
    from toolkit.run_folder import NO_COMMIT

    passed = sum(c["passed"] for c in result["checks"])
    lines = [f"# GPU demo ({result['device']}): {passed} of {len(result['checks'])} checks pass", "",
             f"Recipe `{result['recipe']}` {' '.join(result['overrides'])}".rstrip() + f"; {result['steps']} steps; "
             f"peak memory in training {fmt(result['peak_memory_gib'], 2)} GiB; "
             f"{result['elapsed_s']:.0f} s in all (" + ", ".join(f"{k} {v:.0f} s" for k, v in result["phases"].items())
             + f"); toolkit commit {result.get('commit', NO_COMMIT)}.", ""]
    lines += [f"- **{'pass' if c['passed'] else 'fail'}**: {c['name']}: {c['detail']}" for c in result["checks"]]
    lines += ["", "```", result["verdict"], "```", "", f"The run's report: `report.md`; with its plots, metrics and "
              f"evaluation results in `{RESULTS}` (`run/`; the zero-shot YaRN x4 reference: `{REFERENCE}/`).", ""]
    return "\n".join(lines)


def bundle(run_dir: Path, out: Path) -> Path:
    """The run without its weights (report, plots, metrics, evaluation results, run_info, the resolved recipe) as
    ``run/`` and the zero-shot reference as ``zero-shot-yarn/`` in one gzip'd tar, :data:`RESULTS` in ``out``, with
    the run's ``report.md`` beside it to read at once."""
    from toolkit.output_paths import atomic_file
    from toolkit.run_folder import CHECKPOINTS, FINAL, REPORT_MD

    target = out / RESULTS
    with atomic_file(target) as partial, tarfile.open(partial, "w:gz") as archive:
        for path in sorted(run_dir.rglob("*")):
            relative = path.relative_to(run_dir)
            if path.is_file() and relative.parts[0] not in (FINAL, CHECKPOINTS):
                top = "" if relative.parts[0] == REFERENCE else "run"
                archive.add(path, arcname=str(Path(top) / relative))
    if (run_dir / REPORT_MD).is_file():
        with atomic_file(out / REPORT_MD) as partial:
            shutil.copyfile(run_dir / REPORT_MD, partial)
    return target


def stopped_early(run_dir: Path, out: Path, phases: dict[str, float], elapsed_s: float) -> str:
    """What a demo stopped by its time limit leaves, to size a shorter rerun: the run folder so far in
    :data:`RESULTS`, and ``gpu-demo.md`` naming the phases and evaluations that finished and the last training
    step logged."""
    from toolkit.formatting.numbers import fmt
    from toolkit.output_paths import write_text
    from toolkit.run_folder import eval_tags, read_metrics

    out.mkdir(parents=True, exist_ok=True)
    done = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases.items()) or "nothing"
    lines = [f"# GPU demo stopped by its time limit after {elapsed_s:.0f} s", "", f"Phases finished: {done}."]
    if run_dir.is_dir():
        bundle(run_dir, out)
        lines.append(f"Evaluations finished: {', '.join(eval_tags(run_dir)) or 'none'}.")
        steps = [m for m in read_metrics(run_dir) if "step" in m]
        if steps:
            last = steps[-1]
            lines.append(f"Last training step logged: {last['step']} at {fmt(last.get('elapsed_s'), 0)} s of "
                         f"training, {fmt(last.get('tokens_per_s'), 0)} tokens/s, peak memory "
                         f"{fmt(last.get('peak_memory_gib'), 2)} GiB.")
        lines.append(f"The run folder so far is in `{RESULTS}`. A shorter rerun: "
                     "`make gpu-demo OUT=$OUT ARGS=\"--set train.max_steps=N\"`.")
    text = "\n".join(lines) + "\n"
    write_text(out / "gpu-demo.md", text)
    return text
