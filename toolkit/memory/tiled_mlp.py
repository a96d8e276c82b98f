"""Tiled MLP (as in ALST): each decoder layer's MLP runs over sequence tiles, one at a time, under checkpoint.

At long lengths the MLP's intermediate activations (``batch x seq_len x intermediate_size``, 3.5x the hidden
size for Llama 3, times gate/up/act) are the largest tensors of a layer. Computing the MLP tile by tile under
``torch.utils.checkpoint`` keeps only one tile's intermediates alive in the forward and in the backward's
recompute; what stays is each tile's input (a view of the layer's hidden states) and the concatenated output.
The MLP is position-wise, so the result is the untiled result.

The wrapping is per instance: each MLP's ``forward`` attribute is replaced by a tiling callable that holds the
original bound ``forward``. The transformers classes stay untouched, and so do the module tree and parameter
names (``layers.0.mlp.gate_proj.weight``), which checkpoints, ``save_pretrained``, peft and FSDP rely on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from toolkit.errors import UserError
from toolkit.memory.checkpointing import decoder_layers


class TiledForward:
    """Calls ``forward`` on ``tiles`` slices of the sequence dimension (dim 1 of ``[batch, seq, hidden]``)."""

    def __init__(self, forward: Callable[[Tensor], Tensor], tiles: int):
        self.forward = forward
        self.tiles = tiles

    def __call__(self, hidden: Tensor) -> Tensor:
        pieces = hidden.chunk(self.tiles, dim=1)
        if len(pieces) == 1:
            return self.forward(hidden)
        if not torch.is_grad_enabled():
            return torch.cat([self.forward(piece) for piece in pieces], dim=1)
        return torch.cat([checkpoint(self.forward, piece, use_reentrant=False) for piece in pieces], dim=1)


def decoder_mlps(model: nn.Module) -> list[nn.Module]:
    """The ``mlp`` module of every decoder layer of ``model``."""
    return [mlp for layer in decoder_layers(model) if isinstance(mlp := getattr(layer, "mlp", None), nn.Module)]


def enable_tiled_mlp(model: nn.Module, tiles: int) -> None:
    """Run every decoder layer's MLP over ``tiles`` sequence tiles (calling it again changes the tile count)."""
    mlps = decoder_mlps(model)
    if not mlps:
        raise UserError(f"train.tiled_mlp: {type(model).__name__} has no decoder layers with an mlp to tile")
    for mlp in mlps:
        current = mlp.forward
        mlp.forward = TiledForward(current.forward if isinstance(current, TiledForward) else current, tiles)
