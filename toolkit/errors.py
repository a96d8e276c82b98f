"""Errors that the CLI turns into one line and an exit code."""

import argparse
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, TypeVar


def reason(exc: BaseException) -> str:
    """An exception as one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


class UserError(Exception):
    """Something the user got wrong (bad recipe, missing file, impossible setting): exit code 2.

    The message is one line that names the field path or the file (and line) at fault.
    """

    exit_code = 2


class RunFailure(Exception):
    """A failure at run time that is not the user's input (non-finite loss, out of memory): exit code 1."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM met outside a run's own stop handling, raised where Ctrl-C raises KeyboardInterrupt: a command ends
    the same way on either (its results saved after each batch kept, a file written whole or not at all)."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (in the main thread; elsewhere signals are left alone). A
    run's own handlers (``toolkit.training.faults.stop_on_signals``) take over inside it and give this one back."""
    def handler(_signum: int, _frame: object) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Stopped(Exception):
    """A run stopped on SIGTERM/SIGINT: exit code 128 + the signal number. ``checkpoint``: the one saved, None before
    the first step (the evaluation of the starting model, whose finished part the same command reuses). ``during``:
    the work it cut short, when not a step (an evaluation, which the continued run finishes)."""

    def __init__(self, signum: int, checkpoint: str | None, during: str | None = None):
        where = f" during {during}" if during else ""
        kept = (f"checkpoint saved at {checkpoint}; continue with train.resume=true" if checkpoint else
                "nothing trained yet: the same command continues, reusing what the evaluation finished")
        super().__init__(f"stopped by {signal.Signals(signum).name}{where}; {kept}")
        self.exit_code = 128 + signum


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """For a module's or script's ``main``: a UserError within the block is its one line on stderr and its exit
    code, as the CLI gives it."""
    try:
        yield
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes are one line like every other user error (its subcommands' parsers too), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (options: {self.prog} --help)\n")


def command_parser(doc: str | None, module: str) -> OneLineParser:
    """The parser of ``python -m MODULE`` (or of ``python SCRIPT``, ``module`` a ``.py`` path: the benchmarks): named
    so in its usage and errors, described by the first paragraph of its docstring ``doc`` (its first line alone may
    stop mid-sentence), its literals quoted as in Markdown."""
    paragraph = " ".join((doc or "").split("\n\n")[0].split())
    prog = f"python {module}" if module.endswith(".py") else f"python -m {module}"
    return OneLineParser(prog=prog, description=paragraph.replace("``", "`"))


Number = TypeVar("Number", int, float)


def _number(text: str, convert: Callable[[str], Number], within: Callable[[Number], bool], what: str) -> Number:
    """``text`` as an argparse type: ``convert``-ed, an ArgumentTypeError naming ``what`` unless ``within``."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not within(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number above 0."""
    return _number(text, int, lambda value: value >= 1, "a positive whole number")


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0 (seconds, GiB, TFLOP/s)."""
    return _number(text, float, lambda value: 0 < value < float("inf"), "a positive number")


def seed_number(text: str) -> int:
    """An argparse type: a random seed (a whole number from 0 to 2**32 - 1)."""
    from toolkit.recipe.strict import SEED_LIMIT

    return _number(text, int, lambda value: 0 <= value < SEED_LIMIT,
                   f"a seed (a whole number from 0 to {SEED_LIMIT - 1})")


def _writable(folder: Path, text: str) -> None:
    from toolkit.output_paths import check_writable

    try:
        check_writable(folder, text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def user_path(text: str) -> str:
    """An argparse type: a path with ``~`` expanded, as a shell does for a word of its own (``--out=~/x`` arrives
    unexpanded)."""
    return os.path.expanduser(text)


def output_file(text: str) -> Path:
    """An argparse type: a file path in a folder that is, or can be made, writable (checked before the work)."""
    path = Path(user_path(text))
    _writable(path.parent, text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; name a file")
    return path


def output_folder(text: str) -> Path:
    """An argparse type: a folder that is, or can be made, writable (checked before the work)."""
    path = Path(user_path(text))
    _writable(path, text)
    return path
