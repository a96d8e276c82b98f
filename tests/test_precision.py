"""Precision names: every place that offers one offers the names ``toolkit.model.precision`` resolves (the command
line cannot import torch to read them: ``--help`` stays fast)."""

from __future__ import annotations

import argparse
import typing

import pytest
import torch

from toolkit.cli import _parser
from toolkit.errors import UserError
from toolkit.evals.jury_spec import JudgeSpec
from toolkit.model.precision import DTYPES, precision_name, resolve_dtype
from toolkit.recipe.schema import ModelSpec


def test_every_offered_precision_is_one_the_toolkit_resolves() -> None:
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    [flag] = [action for action in commands.choices["eval"]._actions if "--precision" in action.option_strings]
    assert list(flag.choices or []) == ["auto", *DTYPES]
    assert set(typing.get_args(JudgeSpec.model_fields["precision"].annotation)) == {"auto", *DTYPES}
    assert set(typing.get_args(ModelSpec.model_fields["precision"].annotation)) == {"auto", *DTYPES} - {"fp16"}


def test_names_and_dtypes_round_trip() -> None:
    assert {name: precision_name(dtype) for name, dtype in DTYPES.items()} == {name: name for name in DTYPES}
    assert precision_name(torch.int8) == "int8"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(UserError, match="^model.precision: fp16 is not supported on CPU"):
        resolve_dtype("fp16", torch.device("cpu"))
