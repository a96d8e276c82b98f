"""What the tests download once: the real pretrained model (SmolLM2-135M-Instruct, ``make small-model``), the real
corpus (``make corpus``) and llama.cpp (``make llama-cpp``); and real English text.

Tests that need one of them skip, with the reason, when it is absent outside CI; ``.ci/run`` makes all three first,
so under ``CI=true`` they run, and fail when a make target did not make what they need.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
from pathlib import Path

import pytest

from toolkit.data.corpus import DEFAULT_DIR as CORPUS_DIR
from toolkit.data.corpus import is_complete as corpus_complete
from toolkit.export.to_gguf import CONVERTER_DIR
from toolkit.model.small_model import DEFAULT_DIR, is_complete

REPO = Path(__file__).resolve().parents[1]
SMALL_MODEL = REPO / DEFAULT_DIR
CORPUS = REPO / CORPUS_DIR
IN_CI = os.environ.get("CI") == "true"


def _needs(present: bool, reason: str) -> pytest.MarkDecorator:
    """Skip when a download is absent, except in CI, which makes it first (there the test runs, and fails)."""
    return pytest.mark.skipif(not present and not IN_CI, reason=f"{reason} (CI does)")


needs_small_model = _needs(is_complete(SMALL_MODEL), f"no real model at {DEFAULT_DIR}: run `make small-model`")
needs_corpus = _needs(corpus_complete(CORPUS), f"no corpus at {CORPUS_DIR}: run `make corpus`")
needs_converter = _needs((CONVERTER_DIR / "convert_hf_to_gguf.py").is_file(),
                         "no llama.cpp converter in .llama-cpp/converter: run `make llama-cpp`")
needs_llama_cpp = _needs(importlib.util.find_spec("llama_cpp") is not None,
                         "llama-cpp-python is not installed: run `make llama-cpp` (a CPU build from source, once)")


def uses_corpus(path: Path) -> bool:
    """Whether the recipe or suite at ``path`` names files of the corpus."""
    return f"{CORPUS_DIR}/" in path.read_text()


def loadable(paths: list[Path]) -> list[Path]:
    """``paths`` less those naming the corpus or the real small model when it is absent outside CI (``validate``
    checks that the files they name are there)."""
    corpus, model = corpus_complete(CORPUS) or IN_CI, is_complete(SMALL_MODEL) or IN_CI
    return [path for path in paths
            if (corpus or not uses_corpus(path)) and (model or str(DEFAULT_DIR) not in path.read_text())]


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
