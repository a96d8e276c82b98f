"""The real pretrained model of the tests (SmolLM2-135M-Instruct, ``make small-model``), the real corpus
(``make corpus``) and real English text.

Tests that use the model skip, with the reason, when the folder is absent; ``.ci/run`` makes it first, so CI runs
them. Tests that use the corpus (and the recipes and suites that name ``data/corpus/``) skip when it is absent
outside CI; under ``CI=true`` they run, and fail when ``make corpus`` did not make it.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import pytest

from toolkit.data.corpus import DEFAULT_DIR as CORPUS_DIR
from toolkit.data.corpus import is_complete as corpus_complete
from toolkit.model.small_model import DEFAULT_DIR, is_complete

REPO = Path(__file__).resolve().parents[1]
SMALL_MODEL = REPO / DEFAULT_DIR

needs_small_model = pytest.mark.skipif(
    not is_complete(SMALL_MODEL), reason=f"no real model at {DEFAULT_DIR}: run `make small-model` (CI does)")
CORPUS = REPO / CORPUS_DIR
needs_corpus = pytest.mark.skipif(
    not corpus_complete(CORPUS) and os.environ.get("CI") != "true",
    reason=f"no corpus at {CORPUS_DIR}: run `make corpus` (CI does)")


def uses_corpus(path: Path) -> bool:
    """Whether the recipe or suite at ``path`` names files of the corpus."""
    return f"{CORPUS_DIR}/" in path.read_text()


def loadable(paths: list[Path]) -> list[Path]:
    """``paths`` less those naming the corpus when it is absent outside CI (their suites would not load)."""
    ready = corpus_complete(CORPUS) or os.environ.get("CI") == "true"
    return [path for path in paths if ready or not uses_corpus(path)]


def with_corpus_marks(paths: list[Path]) -> list:
    """``paths`` as test parameters, those naming the corpus marked :data:`needs_corpus`."""
    return [pytest.param(path, marks=needs_corpus) if uses_corpus(path) else path for path in paths]


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
