"""The transformers backend: a loaded model (any causal LM, adapters included) and its tokenizer answer a runner's
requests with :mod:`toolkit.evals.scoring`'s primitives, each batch padded into one forward pass (or one
``generate``) on the model's device."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch

from toolkit.data.tokens import pad_id
from toolkit.evals.backend import AnswerRequest
from toolkit.evals.scoring import generate_greedy, greedy_matches, model_device, token_losses


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module) -> str:
    """A cheap identity of the weights and RoPE: the first values of every parameter, hashed."""
    digest = hashlib.sha1()
    config = getattr(model, "config", None)
    rope = [getattr(config, "rope_parameters", None), getattr(config, "max_position_embeddings", None)]
    digest.update(json.dumps(rope, sort_keys=True, default=str).encode())
    for name, param in model.named_parameters():
        if param.device.type == "meta" or param.numel() == 0:
            continue
        digest.update(name.encode())
        digest.update(param.detach().reshape(-1)[:16].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class TransformersBackend:
    """``model`` (in eval mode: :func:`toolkit.model.loading.evaluating`) and its ``tokenizer``."""

    name = "transformers"
    max_length = None
    """No fixed limit: RoPE settings and memory decide how long a prompt can be."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer, self.pad_id = model, tokenizer, pad_id(tokenizer)

    @cached_property
    def fingerprint(self) -> str:
        """Taken once: a RoPE setting switched in for a while (``rope_compare``) does not change it."""
        return model_fingerprint(self.model)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def greedy_matches(self, requests: Sequence[AnswerRequest]) -> list[bool]:
        return greedy_matches(self.model, requests, self.pad_id)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[str]:
        return generate_greedy(self.model, self.tokenizer, prompts, max_new_tokens, self.pad_id)

    def token_losses(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        return token_losses(self.model, torch.tensor([list(s) for s in sequences], device=self.device)).cpu()
