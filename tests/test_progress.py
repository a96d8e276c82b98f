"""Progress bars: live on a terminal; in a log file (a cluster job's output, CI) a few lines per stage, not one per
step."""

from __future__ import annotations

import io
from pathlib import Path

from toolkit.cli import main
from toolkit.formatting.progress import LOG_INTERVAL_S, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_redraws_live_on_a_terminal_and_every_half_minute_elsewhere() -> None:
    assert progress_bar(total=1, file=Terminal()).mininterval == 0.1  # tqdm's own
    in_a_file = progress_bar(total=1, file=io.StringIO())
    assert (in_a_file.mininterval, in_a_file.maxinterval) == (LOG_INTERVAL_S, LOG_INTERVAL_S)  # tqdm's monitor: 10 s
    assert progress_bar(total=1, file=io.StringIO(), mininterval=5).mininterval == 5


def test_a_run_logged_to_a_file_draws_each_stage_twice(micro_recipe: Path, capsys) -> None:
    """The micro run trains 6 and 4 steps in seconds: its bars are drawn when they open and when they close (each
    step redrew the bar, whatever the interval)."""
    assert main(["train", str(micro_recipe)]) == 0
    draws = capsys.readouterr().err.split("\r")
    assert [sum(d.startswith(f"train {name} @") for d in draws) for name in ("short", "long")] == [2, 2]
    assert any(d.startswith("train long @ 128: 100%|") and "4/4" in d and "loss=" in d for d in draws)
