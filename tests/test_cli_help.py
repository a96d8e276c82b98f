"""``--help``: every command says what it does, what it writes and its exit codes; every option says what it is."""

from __future__ import annotations

import argparse

import pytest

from toolkit.cli import _parser, main

COMMANDS = ("train", "validate", "plan", "eval", "predict", "report", "push", "merge", "export", "small-model",
            "corpus")


def _commands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_is_listed() -> None:
    assert tuple(_commands()) == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_a_description_with_exit_codes_and_every_option_a_help_text(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _commands()[command]
    assert parser.description and "Exit code" in parser.description
    assert [action.dest for action in parser._actions if action.help is None] == []
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    paragraph = capsys.readouterr().out.split("\n\n")[1]  # after the usage lines
    assert " ".join(paragraph.split()) == " ".join(parser.description.split())
