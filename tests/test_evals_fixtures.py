"""Tiny models and tokenizers shared by the evaluation tests (imported, no tests here)."""

from __future__ import annotations

from functools import lru_cache

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.micro_models import micro_config
from toolkit.data.tokenizer import train_tokenizer
from toolkit.recipe.schema import TokenizerTraining


@lru_cache(maxsize=1)
def tiny_tokenizer():
    return train_tokenizer(TokenizerTraining(vocab_size=512, corpus_documents=300), seed=0)


def tiny_model(max_positions: int = 256, seed: int = 0) -> LlamaForCausalLM:
    """A random 2-layer Llama (hidden 64) in eval mode."""
    torch.manual_seed(seed)
    config = micro_config(vocab_size=len(tiny_tokenizer()), max_position_embeddings=max_positions,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                         bos_token_id=tiny_tokenizer().bos_token_id, eos_token_id=tiny_tokenizer().eos_token_id,
                         pad_token_id=tiny_tokenizer().pad_token_id)
    return LlamaForCausalLM(config).eval()


class Oracle(torch.nn.Module):
    """Predicts, at every position, the token ``shift`` places ahead in its own input (a perfect teacher-forced
    model for ``shift=1``); counts its forward calls."""

    def __init__(self, vocab: int, shift: int = 1):
        super().__init__()
        self.vocab, self.shift, self.calls = vocab, shift, 0
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = LlamaConfig(vocab_size=vocab, max_position_embeddings=4096)

    def forward(self, input_ids: torch.Tensor, logits_to_keep: torch.Tensor, use_cache: bool = False):
        self.calls += 1
        ahead = torch.roll(input_ids, -self.shift, dims=1)
        logits = torch.nn.functional.one_hot(ahead, self.vocab).float()[:, logits_to_keep]
        return type("Output", (), {"logits": logits})()
