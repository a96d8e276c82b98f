"""The training objective as a module: backbone forward plus a loss that never holds full-vocabulary
logits for the whole sequence. Wrapping it as one module lets accelerate (DDP, FSDP) see every call."""

from __future__ import annotations

import torch
from torch import nn

from toolkit.lora import CausalLM, unwrap_peft
from toolkit.memory.chunked_loss import causal_lm_loss, shifted_lm_loss


def causal_lm_parts(model: CausalLM) -> tuple[nn.Module, nn.Module]:
    """The decoder stack and the output head of a (possibly peft-wrapped) causal LM."""
    base = unwrap_peft(model)
    return base.get_decoder(), base.get_output_embeddings()


class CausalLMObjective(nn.Module):
    """``forward(batch) -> (sum of token losses, number of target tokens)`` for a causal LM.

    Packed rows carry ``position_ids`` restarting per document and no ``attention_mask``, which keeps
    documents isolated in sdpa, eager and flex attention (with ``use_cache=False``).
    """

    def __init__(self, model: CausalLM, loss_chunk_size: int | None):
        super().__init__()
        self.model = model
        self.loss_chunk_size = loss_chunk_size

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor | None = None,
                shift_labels: torch.Tensor | None = None):
        """``labels`` unshifted (HF convention), or ``shift_labels`` already aligned with each position, as
        sequence-parallel slices carry them."""
        decoder, head = causal_lm_parts(self.model)
        hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        if shift_labels is not None:
            return shifted_lm_loss(hidden, head, shift_labels, self.loss_chunk_size)
        if labels is None:
            raise TypeError("forward needs labels or shift_labels")
        return causal_lm_loss(hidden, head, labels, self.loss_chunk_size)
