"""The CLI configures logging once: the toolkit's messages plain at INFO, -v/-q louder or quieter."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from toolkit.cli import configure_logging, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def default_logging():
    yield
    configure_logging()


def test_toolkit_info_is_printed_plainly_and_other_libraries_stay_at_warning(capsys) -> None:
    configure_logging()
    logging.getLogger("toolkit.model.lora").info("LoRA: %d trainable of %d parameters", 5, 10)
    logging.getLogger("toolkit.model.lora").debug("not shown")
    assert capsys.readouterr().err == "LoRA: 5 trainable of 10 parameters\n"
    assert logging.getLogger().level == logging.WARNING
    configure_logging()  # again: still one handler
    logging.getLogger("toolkit.evals.api").info("once")
    assert capsys.readouterr().err == "once\n"


@pytest.mark.parametrize(("flag", "own", "others"), [("-q", logging.WARNING, logging.ERROR),
                                                     ("--verbose", logging.DEBUG, logging.INFO)])
def test_quiet_and_verbose_flags(flag: str, own: int, others: int, capsys) -> None:
    assert main([flag, "validate", str(ROOT / "recipes" / "tiny-passkey.yaml")]) == 0
    assert logging.getLogger("toolkit").level == own and logging.getLogger().level == others
    logging.getLogger("toolkit.model.lora").info("info")
    assert capsys.readouterr().err == ("" if flag == "-q" else "info\n")


def test_verbose_and_quiet_exclude_each_other(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["-v", "-q", "validate", "x.yaml"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: python -m toolkit: argument -q/--quiet: not allowed with argument "
                                       "-v/--verbose (options: python -m toolkit --help)\n")
