"""The real pretrained model of the tests (SmolLM2-135M-Instruct, ``make small-model``) and real English text.

Tests that use it skip, with the reason, when the folder is absent; ``.ci/run`` makes it first, so CI runs them.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from toolkit.model.small_model import DEFAULT_DIR, is_complete

REPO = Path(__file__).resolve().parents[1]
SMALL_MODEL = REPO / DEFAULT_DIR

needs_small_model = pytest.mark.skipif(
    not is_complete(SMALL_MODEL), reason=f"no real model at {DEFAULT_DIR}: run `make small-model` (CI does)")


def english_documents() -> list[str]:
    """Real English prose that ships with Python: the docstrings of standard-library modules and their members,
    one document per module (deterministic for a Python version)."""
    import argparse
    import collections
    import json as json_module
    import logging
    import pathlib
    import random
    import textwrap
    import unittest
    import zipfile

    documents = []
    for module in (argparse, collections, json_module, logging, pathlib, random, textwrap, unittest, zipfile):
        parts = [inspect.getdoc(module) or ""]
        for _, member in sorted(vars(module).items()):
            if (inspect.isclass(member) or inspect.isfunction(member)) and member.__module__ == module.__name__:
                parts.append(inspect.getdoc(member) or "")
        documents.append("\n\n".join(part for part in parts if len(part) > 80))
    return documents


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path
