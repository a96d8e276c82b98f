"""The run's claim (``eval.verdict`` in the recipe), checked on its own evaluations.

From a run folder: the needle task's accuracy at the native (trained) length before extension and at the last
stage's length after it, each with its 95% Wilson interval and n; the effective context length before and after
(RULER's sense: the longest length of the grid whose accuracy, and every shorter length's, reaches the
threshold); the short-context retention ratios (final / before extension, each with its 95% interval where both
scores are counted); pass or fail per check and overall.
Printed at the end of a run, put at the top of the report, checked by ``python -m toolkit report RUN --check``
and tabulated across runs (seeds) by ``toolkit.report.seed_table``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import UserError
from toolkit.evals.run_results import read_run
from toolkit.evals.stats import Comparison, Rate, effective_length, length_text, niah_rates
from toolkit.formatting.blocks import Block, Code, Paragraph
from toolkit.formatting.numbers import number
from toolkit.recipe.schema import VerdictSpec
from toolkit.report.cells import compare
from toolkit.run_folder import (
    CHECKPOINTS,
    FINAL,
    RECIPE,
    RUN_INFO,
    Run,
    evaluations,
    stage_index,
    verdict_lengths,
    verdict_models,
)
from toolkit.training.resume_point import complete_checkpoints


@dataclass(frozen=True)
class Check:
    name: str
    """What is checked, e.g. ``accuracy at 1024 after extension``."""
    passed: bool
    detail: str
    """The measured value against the bar, e.g. ``0.80 < 0.90``."""


@dataclass(frozen=True)
class Verdict:
    spec: VerdictSpec
    reference: str
    """Tag of the model before extension (``Run.reference``)."""
    final: str
    """Tag of the final model (the last stage's evaluation)."""
    native_length: int
    extended_length: int
    before: dict[int, Rate]
    """The verdict task's accuracy by length, model before extension."""
    after: dict[int, Rate]
    """The same for the final model."""
    retention: dict[str, Comparison | None]
    """``suite/task`` -> final score / score before extension (``None`` when that is undefined)."""
    checks: tuple[Check, ...]

    @property
    def native_before(self) -> Rate:
        return self.before[self.native_length]

    @property
    def extended_after(self) -> Rate:
        return self.after[self.extended_length]

    @property
    def native_after(self) -> Rate | None:
        return self.after.get(self.native_length)

    @property
    def effective_before(self) -> int | None:
        return effective_length(_values(self.before), self.spec.effective_threshold)

    @property
    def effective_after(self) -> int | None:
        return effective_length(_values(self.after), self.spec.effective_threshold)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def retention_text(self) -> str:
        one_suite = len({key.split("/", 1)[0] for key in self.retention}) <= 1
        return ", ".join(f"{key.split('/', 1)[1] if one_suite else key} {_ratio(ratio)}"
                         for key, ratio in self.retention.items()) or "-"

    def text(self) -> str:
        """A few lines: the overall verdict, then one line per measurement."""
        spec, factor = self.spec, self.extended_length / self.native_length
        mark = {check.name: "ok" if check.passed else "FAIL" for check in self.checks}
        native, extended = _accuracy(self.native_length, "before"), _accuracy(self.extended_length, "after")
        lines = [(f"Verdict ({spec.task}): {'PASS' if self.passed else 'FAIL'}. Trained at {self.native_length} "
                  f"tokens, extended {factor:g}x to {self.extended_length}."),
                 f"  {native}: {self.native_before} (>= {spec.native_min:.2f} {mark[native]})",
                 f"  {extended}: {self.extended_after} (>= {spec.extended_min:.2f} {mark[extended]})"]
        if self.native_after is not None:
            lines.append(f"  {_accuracy(self.native_length, 'after')}: {self.native_after}")
        if spec.extended_before_max is not None:
            name = _accuracy(self.extended_length, "before")
            lines.append(f"  {name}: {self.before[self.extended_length]} (<= {spec.extended_before_max:.2f} "
                         f"{mark[name]})")
        lines.append(f"  effective length (>= {spec.effective_threshold:g}): {length_text(self.effective_before)} "
                     f"before, {length_text(self.effective_after)} after")
        if self.retention:
            lines.append(f"  {', '.join(spec.retention_suites)} retention (final / before): {self.retention_text()} "
                         f"(>= {spec.retention_min:.2f} {mark[_RETENTION]})")
        lines.append(f"  models: {self.reference} (before extension), {self.final} (final)")
        return "\n".join(lines)


_RETENTION = "retention"


def _accuracy(length: int, when: str) -> str:
    """The name of an accuracy check (and its line): at ``length`` tokens, ``when`` (before/after) extension."""
    return f"accuracy at {length} {when} extension"


def _values(rates: Mapping[int, Rate]) -> dict[int, float]:
    return {length: rate.value for length, rate in rates.items()}


def _ratio(ratio: Comparison | None) -> str:
    return "-" if ratio is None else ratio.format()


def verdict_spec(run: Run) -> VerdictSpec | None:
    """The run's ``eval.verdict``; ``None`` when its recipe has none (or it wrote no recipe)."""
    return run.recipe.eval.verdict if run.recipe else None


def retention_suites(run: Run) -> list[str]:
    """The suites whose scores must hold after extension: the recipe's ``eval.verdict.retention_suites``, or the
    schema's default when the recipe claims nothing."""
    spec = verdict_spec(run)
    return list(spec.retention_suites if spec else VerdictSpec.model_fields["retention_suites"].default)


def _rates(run: Run, tag: str, suite: str, task: str) -> dict[int, Rate]:
    entry = run.entry(tag, suite, task)
    if not entry:
        raise UserError(f"{run.folder}: no {suite}/{task} results for {tag} (needed by eval.verdict)")
    if entry.get("type") not in (None, "niah"):
        raise UserError(f"eval.verdict.task: {suite}/{task} is a {entry.get('type')} task, not niah")
    if not entry.get("complete"):
        raise UserError(f"{run.folder}: {suite}/{task} at {tag} is unfinished (its evaluation was interrupted; the "
                        "verdict needs every length and depth)")
    return niah_rates(entry)


def _score(run: Run, tag: str, suite: str, task: str) -> float | None:
    return number((run.entry(tag, suite, task) or {}).get("score"))


def suite_retention(run: Run, suite: str, reference: str, final: str) -> dict[str, Comparison | None]:
    """Task -> its retention on ``suite``: the score at ``final`` / the score at ``reference``, with its 95% interval
    where both are counted rates (``None`` when either score is missing or the score before is 0), for every task
    with a main score at either tag."""
    ratios: dict[str, Comparison | None] = {}
    tasks = (run.evals.get(tag, {}).get(suite, {}).get("tasks", {}) for tag in (reference, final))
    for task in dict.fromkeys(key for found in tasks for key in found):
        old, new = _score(run, reference, suite, task), _score(run, final, suite, task)
        if old is None and new is None:
            continue  # a task without a main score (perplexity)
        ratios[task] = compare(run, Comparison.ratio, (final, run.entry(final, suite, task)),
                               (reference, run.entry(reference, suite, task))) if old else None
    return ratios


def _retention(run: Run, spec: VerdictSpec, reference: str, final: str) -> dict[str, Comparison | None]:
    ratios: dict[str, Comparison | None] = {}
    for suite in spec.retention_suites:
        before, after = (run.evals.get(tag, {}).get(suite) for tag in (reference, final))
        if before is None or after is None:
            missing = reference if before is None else final
            raise UserError(f"{run.folder}: no {suite} results for {missing} (needed by eval.verdict.retention_suites)")
        ratios |= {f"{suite}/{task}": ratio for task, ratio in suite_retention(run, suite, reference, final).items()}
    return ratios


def compute_verdict(run: Run, spec: VerdictSpec | None = None) -> Verdict:
    """The verdict of ``run`` under ``spec`` (default: the run's own); UserError when something it needs is missing."""
    spec = spec or verdict_spec(run)
    if spec is None and run.recipe is None:
        raise UserError(f"{run.folder}: no {RECIPE}, so no verdict to check (is it a run folder of `python -m toolkit "
                        "train`?)")
    if spec is None:
        raise UserError(f"{run.folder}: the recipe has no eval.verdict (e.g. verdict: {{task: niah-tiny/passkey}})")
    native = run.info.native_length
    stages = run.info.stages or (run.recipe.train.stages if run.recipe else [])
    extended = stages[-1].seq_len if stages else None
    if not native or not extended:
        raise UserError(f"{run.folder}: {RUN_INFO} lacks native_length or stages (needed by eval.verdict)")
    models = verdict_models(evaluations(run.tags), native, [stage.seq_len for stage in run.info.stages])
    if models is None:
        raise _unjudged(run, f"no evaluation of the model before extension and after it (tags: "
                             f"{', '.join(run.tags) or 'none'})")
    reference, final = models
    if stage_index(final) != len(stages) - 1:
        raise _unjudged(run, f"the last stage ({len(stages) - 1}) has no evaluation (the last evaluated is {final}); "
                             "the verdict judges the final model")
    suite, task = spec.task.split("/", 1)
    before, after = _rates(run, reference, suite, task), _rates(run, final, suite, task)
    for need in verdict_lengths(spec, native, extended):
        tag, rates = (reference, before) if need.before else (final, after)
        if need.length not in rates:
            why = (f"grid: {', '.join(map(str, sorted(rates)))}" if need.field == "eval.verdict.task"
                   else f"needed by {need.field}")
            raise UserError(f"{run.folder}: {spec.task} at {tag} has no length {need.length} ({why})")
    retention = _retention(run, spec, reference, final)
    checks = [Check(_accuracy(native, "before"), before[native].value >= spec.native_min,
                    f"{before[native].value:.2f} vs {spec.native_min:.2f}"),
              Check(_accuracy(extended, "after"), after[extended].value >= spec.extended_min,
                    f"{after[extended].value:.2f} vs {spec.extended_min:.2f}")]
    if spec.extended_before_max is not None:
        checks.append(Check(_accuracy(extended, "before"), before[extended].value <= spec.extended_before_max,
                            f"{before[extended].value:.2f} vs {spec.extended_before_max:.2f}"))
    if retention:
        low = [f"{key} {_ratio(ratio)}" for key, ratio in retention.items()
               if ratio is None or ratio.value < spec.retention_min]
        checks.append(Check(_RETENTION, not low, (", ".join(low) or "all") + f" vs {spec.retention_min:.2f}"))
    return Verdict(spec, reference, final, native, extended, before, after, retention, tuple(checks))


def _unjudged(run: Run, why: str) -> UserError:
    """Why ``run`` has no verdict (``why``); for a run stopped part way (checkpoints, no final/), how to go on first."""
    done = complete_checkpoints(run.folder / CHECKPOINTS)
    if done and not (run.folder / FINAL).is_dir():
        return UserError(f"{run.folder}: the run is unfinished (its latest checkpoint {done[-1].name}, no {FINAL}/): "
                         f"train its recipe again with train.resume=true to continue it ({why})")
    return UserError(f"{run.folder}: {why}")


def check_run(folder: Path) -> Verdict:
    """The verdict of the run folder ``folder`` under its recipe's ``eval.verdict``."""
    return compute_verdict(read_run(Path(folder)))


def verdict_text(run: Run) -> str:
    """The verdict as printed at the end of a run, or one line saying why there is none."""
    try:
        return compute_verdict(run).text()
    except UserError as exc:
        return f"Verdict not computed: {exc}"


def verdict_blocks(run: Run) -> list[Block]:
    """The report's opening block (nothing when the recipe claims nothing)."""
    try:
        if verdict_spec(run) is None:
            return []
        verdict = compute_verdict(run)
    except UserError as exc:
        return [Paragraph(f"Verdict not computed: {exc}")]
    return [Code(verdict.text(), "pass" if verdict.passed else "fail")]
