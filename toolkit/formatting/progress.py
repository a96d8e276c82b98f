"""Progress bars for long work (training steps, evaluation prompts): live on a terminal or in a notebook; where the
output goes to a file (a cluster job's log, CI) redrawn at most every :data:`LOG_INTERVAL_S` seconds, so a long run's
log holds a line of progress every half minute, not ten a second."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm
from tqdm.autonotebook import tqdm as notebook_or_text
from tqdm.std import tqdm as text

LOG_INTERVAL_S = 30.0


def progress_bar(**kwargs: Any) -> tqdm:
    """``tqdm(**kwargs)`` (tqdm.auto's: a widget in a notebook), redrawn at most every :data:`LOG_INTERVAL_S`
    seconds where it writes text to no terminal."""
    stream = kwargs.get("file") or sys.stderr
    if notebook_or_text is text and not getattr(stream, "isatty", lambda: False)():
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_S)  # tqdm's monitor redraws a bar left alone this long
    return tqdm(**kwargs)
