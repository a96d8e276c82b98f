"""Run llama.cpp's converter on a transformers folder, with the pre-tokenizer named by the caller.

A script, run by :mod:`toolkit.export.to_gguf` in a child process whose ``PYTHONPATH`` is the extracted llama.cpp
converter and its ``gguf-py``, so that the converter gets the gguf package it ships with (the installed one is an
older release). llama.cpp's own model class does all the writing (tensor names, Q/K layout, hyperparameters, RoPE,
vocabulary, special tokens, chat template). Two choices are made by the caller, who has read the tokenizer's
configuration: the vocabulary is byte-level BPE (llama.cpp's ``gpt2`` tokenizer model; its Llama class would try
SentencePiece first, and take a byte-fallback BPE for one), and the pre-tokenizer's name (which llama.cpp's converter
finds by hashing token ids, so a vocabulary trained here never matches).

Usage: ``python llama_cpp_convert.py MODEL_DIR OUT_FILE OUTTYPE PRE_TOKENIZER NAME``
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import gguf
import torch
from conversion import ModelBase, ModelType, get_model_architecture, get_model_class  # type: ignore[import-not-found]


def file_type(outtype: str) -> gguf.LlamaFileType:
    """llama.cpp's file type for an ``export --outtype`` name (``toolkit.export.OUTTYPES``, which this script does not
    import): ``ALL_F32`` for f32, ``MOSTLY_<NAME>`` for the others."""
    return gguf.LlamaFileType["ALL_F32" if outtype == "f32" else f"MOSTLY_{outtype.upper()}"]


def convert(model_dir: Path, out: Path, outtype: str, pre_tokenizer: str, name: str) -> None:
    hparams = ModelBase.load_hparams(model_dir, False)
    base = get_model_class(get_model_architecture(hparams, ModelType.TEXT), mmproj=False)

    class Converter(base):  # type: ignore[misc, valid-type]
        model_arch = base.model_arch  # llama.cpp's subclasses name their architecture

        def set_vocab(self) -> None:
            self._set_vocab_gpt2()

        def get_vocab_base_pre(self, tokenizer) -> str:
            return pre_tokenizer

    with torch.inference_mode():
        Converter(model_dir, file_type(outtype), out, model_name=name).write()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    convert(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
