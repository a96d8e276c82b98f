"""Errors that the CLI turns into one line and an exit code."""

import argparse
import signal
from typing import NoReturn


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


class Stopped(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint: exit code 128 + the signal number."""

    def __init__(self, signum: int, checkpoint: str):
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint saved at {checkpoint}; "
                         "continue with train.resume=true")
        self.exit_code = 128 + signum


class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes are one line like every other user error (its subcommands' parsers too), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (options: {self.prog} --help)\n")
