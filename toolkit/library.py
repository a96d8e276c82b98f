"""The toolkit as a library: what ``train``, ``eval``, ``plan`` and ``report --check`` do, as functions, for
notebooks, sweeps and pipelines of your own (docs/library.md).

    from toolkit.library import check_run, evaluate, load_recipe, train

    recipe = load_recipe("recipes/tiny-passkey.yaml", ["output.dir=runs/mine"])
    recipe.train.stages[-1].max_steps = 200      # the typed recipe, its field checked on assignment
    run = train(recipe)                           # checked again as a whole; the run folder, as the CLI writes it
    print(check_run(run).text())                  # the verdict of the recipe's eval.verdict
    scores = evaluate(str(run / "final"), ["evals/niah-tiny.yaml"], out="runs/mine-eval").results

A user mistake raises :class:`UserError` (the CLI prints its one line and exits 2); an invalid value assigned to a
recipe's field raises pydantic's ``ValidationError`` (a ``ValueError``) at once. ``run_suites`` evaluates a model
already loaded in this process; ``register`` adds a task type of your own (evals/README.md).
"""

from toolkit.environment import name_cpu_for_deepspeed
from toolkit.errors import UserError
from toolkit.evals.api import run_suites
from toolkit.evals.command import Evaluation, evaluate
from toolkit.evals.registry import register
from toolkit.evals.task_type import TaskType
from toolkit.plan.command import Plan, plan
from toolkit.recipe.loading import load_recipe
from toolkit.recipe.schema import Recipe
from toolkit.report.report import build_report
from toolkit.report.verdict import Verdict, check_run
from toolkit.runner import run_recipe as train

name_cpu_for_deepspeed()  # as the CLI does, before a run imports DeepSpeed: no warning that it found no GPU

__all__ = ["Evaluation", "Plan", "Recipe", "TaskType", "UserError", "Verdict", "build_report", "check_run", "evaluate",
           "load_recipe", "plan", "register", "run_suites", "train"]
