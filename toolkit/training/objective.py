"""The training objective as a module: backbone forward plus a loss that never holds full-vocabulary
logits for the whole sequence. Wrapping it as one module lets accelerate (DDP, FSDP) see every call."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.data.batches import Batch
from toolkit.data.packing import IGNORE_INDEX
from toolkit.errors import RunFailure
from toolkit.memory.chunked_loss import causal_lm_loss, shifted_lm_loss
from toolkit.model.attention import DENSE_MASK, dense_mask_bytes
from toolkit.model.lora import CausalLM, unwrap_peft
from toolkit.model.segments import decoder_inputs
from toolkit.plan.memory import GIB

log = logging.getLogger(__name__)

DENSE_MASK_WARNING = 1 << 30
"""A dense attention mask this large (bytes) is worth a warning: 32K tokens under sdpa."""


def causal_lm_parts(model: CausalLM) -> tuple[nn.Module, nn.Module]:
    """The decoder stack and the output head of a (possibly peft-wrapped) causal LM."""
    base = unwrap_peft(model)
    return base.get_decoder(), base.get_output_embeddings()


def objective_loss(objective: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``objective`` (a :class:`CausalLMObjective`, or accelerate's wrapper of one) on the model's inputs of
    ``batch`` alone: ids, positions, and labels or shift_labels."""
    return objective(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch.get("labels"),
                     shift_labels=batch.get("shift_labels"))


def choice_loss(hidden: torch.Tensor, head: nn.Module, shift_labels: torch.Tensor,
                choices: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over labelled positions of the cross-entropy over the ``choices`` tokens' logits alone (a softmax over
    the label tokens, not the vocabulary), and the number of those positions; every label must be a choice."""
    labels = shift_labels.reshape(-1).to(hidden.device)
    targets = labels != IGNORE_INDEX
    choice_ids = torch.tensor(choices, device=hidden.device)
    matches = labels[targets][:, None] == choice_ids[None, :]
    if not bool(matches.any(dim=1).all()):
        raise RunFailure("a labelled token is not one of the label tokens; a run whose loss is restricted to "
                         "label_tokens trains on format: arena sources alone")
    logits = head(hidden.reshape(-1, hidden.shape[-1])[targets]).float()[:, choice_ids]
    return F.cross_entropy(logits, matches.int().argmax(dim=1), reduction="sum"), targets.sum()


class CausalLMObjective(nn.Module):
    """``forward(batch) -> (sum of token losses, number of target tokens)`` for a causal LM.

    Packed rows carry ``position_ids`` restarting per document and no ``attention_mask`` (with ``use_cache=False``),
    which keeps documents apart in every kernel; how each kernel is given the rows is ``toolkit.model.segments``'s
    concern (padding tail, flattening for flash-attn, boundaries). A kernel that needs a dense L×L mask for them gets a
    warning with its size, once per row length. With ``choices`` (the label token ids of an arena run) the loss at
    each labelled position is :func:`choice_loss`, a softmax over those tokens alone.
    """

    def __init__(self, model: CausalLM, loss_chunk_size: int | None, choices: tuple[int, ...] | None = None):
        super().__init__()
        self.model = model
        self.loss_chunk_size = loss_chunk_size
        self.choices = choices
        self._warned_lengths: set[int] = set()

    @property
    def config(self):
        """The model's config (DeepSpeed's Ulysses wrapper and its "auto" bucket sizes read it off the prepared
        module)."""
        return unwrap_peft(self.model).config

    def tie_weights(self) -> None:
        """Tie the model's embeddings again: accelerate's FSDP2 preparation with ``fsdp_cpu_ram_efficient_loading``
        moves the prepared module to the meta device and calls this (when the module has it) before reloading the
        weights; without it a model's tied head and embeddings come back as two matrices that train apart."""
        unwrap_peft(self.model).tie_weights()

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor | None = None,
                shift_labels: torch.Tensor | None = None):
        """``labels`` unshifted (HF convention), or ``shift_labels`` already aligned with each position, as
        sequence-parallel slices carry them (their rows are given to the decoder unchanged)."""
        decoder, head = causal_lm_parts(self.model)
        if shift_labels is not None:
            hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
            if self.choices is not None:
                return choice_loss(hidden, head, shift_labels, self.choices)
            return shifted_lm_loss(hidden, head, shift_labels, self.loss_chunk_size)
        if labels is None:
            raise TypeError("forward needs labels or shift_labels")
        implementation = unwrap_peft(self.model).config._attn_implementation
        rows = decoder_inputs(implementation, input_ids, position_ids, labels)
        self._warn_dense_mask(implementation, rows.position_ids)
        hidden = decoder(input_ids=rows.input_ids, position_ids=rows.position_ids, use_cache=False,
                         **rows.kernel_kwargs()).last_hidden_state.view(*input_ids.shape, -1)
        if self.choices is not None:
            return choice_loss(hidden[:, :-1], head, labels[:, 1:], self.choices)
        return causal_lm_loss(hidden, head, labels, self.loss_chunk_size)

    def _warn_dense_mask(self, implementation: str, position_ids: torch.Tensor) -> None:
        batch, length = position_ids.shape
        if implementation not in DENSE_MASK or length in self._warned_lengths or batch * length**2 < DENSE_MASK_WARNING:
            return
        size = dense_mask_bytes(implementation, position_ids, unwrap_peft(self.model).dtype)
        if size >= DENSE_MASK_WARNING:
            self._warned_lengths.add(length)
            log.warning("model.attention %s: rows holding several documents make transformers build a dense "
                        "[%d,1,%d,%d] mask of %.1f GiB (and disable sdpa's flash kernel); model.attention: auto keeps "
                        "packed rows linear in memory on a GPU", implementation, batch, length, length, size / GIB)
