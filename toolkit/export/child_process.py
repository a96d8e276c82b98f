"""Native runtimes (llama.cpp) called in a child process, so that a crash there is one error, not the end of the run.

:func:`in_child` runs a module-level function in a fresh ``spawn`` process and returns its result; an exception it
raises is raised again here; a child killed by a signal (a segfault in native code) becomes one
:class:`~toolkit.errors.RunFailure` line naming the runtime and the signal. :func:`child_failure` words the same
line for a child started otherwise (a subprocess); :func:`run_showing_stderr` runs such a child with its messages and
progress bar shown as they come.
"""

from __future__ import annotations

import codecs
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from toolkit.errors import RunFailure

T = TypeVar("T")
LLAMA_CPP = "llama.cpp (llama-cpp-python)"


def child_failure(runtime: str, doing: str, exitcode: int, detail: str = "") -> RunFailure:
    """The one line for a child that ended with ``exitcode`` (negative: killed by that signal) while ``doing``."""
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return RunFailure(f"{runtime} crashed with {name} while {doing}")
    return RunFailure(f"{runtime} failed while {doing}: {detail or f'exit code {exitcode}'}")


def run_showing_stderr(command: list[str], env: Mapping[str, str]) -> tuple[int, str]:
    """Run ``command``, its stderr copied to ours as it comes (a progress bar redrawn with carriage returns
    included); its exit code and the last line it wrote there, for the error when it fails."""
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = ""
    with subprocess.Popen(command, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as child:
        assert child.stderr is not None
        while chunk := os.read(child.stderr.fileno(), 1 << 16):  # what is there, not a full buffer
            text = decode.decode(chunk)
            sys.stderr.write(text)
            sys.stderr.flush()
            tail = (tail + text)[-4096:]
    lines = [line.strip() for line in re.split(r"[\r\n]", tail) if line.strip()]
    return child.returncode, lines[-1] if lines else ""


def _serve(send: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        outcome: tuple[str, Any, str] = ("result", fn(*args), "")
    except Exception as exc:  # sent back, with where it happened, and raised in the parent
        outcome = ("raised", exc, traceback.format_exc())
    send.send(outcome)


def in_child(fn: Callable[..., T], *args: Any, doing: str, runtime: str = LLAMA_CPP) -> T:
    """``fn(*args)`` in a spawned child process (``fn`` defined at module level, ``args`` picklable)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_serve, args=(send, fn, args), daemon=True)
    child.start()
    send.close()  # the child holds the only sending end: its death ends the pipe
    try:
        try:
            kind, value, where = receive.recv()
        except EOFError:
            child.join()
            raise child_failure(runtime, doing, child.exitcode or 0) from None
        child.join(timeout=60)  # what it does after sending is its exit; killed below if that hangs
    finally:
        receive.close()
        if child.is_alive():
            child.kill()
            child.join()
    if kind == "raised":
        raise value from RuntimeError(f"in the child process:\n{where.rstrip()}")
    return value
