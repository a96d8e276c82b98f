"""The CLI configures logging once: the toolkit's messages plain at INFO, -v/-q louder or quieter."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toolkit.cli import main
from toolkit.formatting.console_logging import configure_logging

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/tiny-passkey.yaml"


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


def test_warnings_known_to_be_expected_are_not_shown_but_with_verbose(capsys) -> None:
    configure_logging()
    handler = logging.StreamHandler()  # what the libraries' records reach, as a root handler would get them
    logging.getLogger().addHandler(handler)
    try:
        logging.getLogger("accelerate.utils.other").warning("[RANK 0] Removed shared tensor {'model.lm_head.weight'} "
                                                            "while saving.")  # as accelerate's adapter words it
        logging.getLogger("lm_eval.api.task").warning("passkey: Custom kwargs can be passed to `--metadata` in console")
        logging.getLogger("accelerate.utils.other").warning("something else")
        assert capsys.readouterr().err == "something else\n"
        configure_logging(verbose=True)
        logging.getLogger("lm_eval.api.task").warning("passkey: Custom kwargs can be passed to `--metadata` in console")
        assert "Custom kwargs" in capsys.readouterr().err
    finally:
        logging.getLogger().removeHandler(handler)


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


@pytest.mark.skipif(torch.accelerator.is_available(), reason="DeepSpeed finds the accelerator itself")
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")
def test_deepspeed_imported_by_a_command_on_a_cpu_machine_does_not_ask_for_a_gpu() -> None:
    """DeepSpeed, which accelerate and transformers import on the way, warns on a machine without a GPU that it was
    "unable to detect it"; a command that imports them (all but the CLI's ``TORCH_FREE``), and ``toolkit.library``
    when imported, tell it the CPU first."""
    ask = "from deepspeed.accelerator import get_accelerator; print(get_accelerator().device_name())"
    env = {key: value for key, value in os.environ.items() if key != "DS_ACCELERATOR"}
    outputs = [subprocess.run([sys.executable, "-c", f"{before}; {ask}"], env=env, capture_output=True, text=True,
                              check=True, cwd=ROOT)
               for before in ("pass", f"from toolkit.cli import main; main(['plan', '{RECIPE}'])",
                              "import toolkit.library")]
    assert "unable to detect it" in outputs[0].stderr + outputs[0].stdout  # what it says unprompted
    for told in outputs[1:]:
        assert told.stdout.splitlines()[-1] == "cpu"
        assert "unable to detect it" not in told.stderr
