"""Offload of checkpointed layer inputs to host memory: pinned buffers, copies on a side stream, optional fp8.

A checkpointed decoder layer keeps only its input (``batch x seq_len x hidden``) for the backward's recompute.
:class:`OffloadStore` is a pair of saved-tensor hooks around that checkpoint: in the forward it copies the input
into pinned host memory on a side CUDA stream (the compute stream goes on; the source stays reserved for the side
stream until its copy is done), in the backward it copies it back on the side stream and makes the compute stream
wait for that copy only. When the backward takes a layer's input it starts the copy of the input the backward needs
next (the layer before), so that copy runs while this layer recomputes. With ``fp8`` the input is stored as
float8 e4m3 with one float32 scale per tensor (amax / 448): half the host bytes of bf16 and of the copies; the
recompute then starts from the rounded input (3 mantissa bits), which perturbs the gradients, not the loss.

Without an accelerator the activations already live in host memory: nothing is copied and there are no streams,
but the same hooks run (fp8 storage, the order of fetches), so the logic is exercised on CPU.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from toolkit.errors import UserError

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
SMALL = 1 << 16
"""Saved tensors with fewer elements than this (checkpoint's placeholders) stay where they are."""


def offloaded_layers(offload: bool | int, layers: int) -> int:
    """How many layers ``train.activation_offload`` offloads (the first ones) in a model of ``layers`` layers."""
    if offload is True:
        return layers
    if offload > layers:
        raise UserError(f"train.activation_offload: {offload} layers to offload, but the model has {layers}")
    return int(offload)


@dataclass(eq=False)
class Stored:
    """One offloaded tensor: its host copy (fp8 or as computed), what to restore, and its copy back if started."""

    host: Tensor
    dtype: torch.dtype
    device: torch.device
    scale: Tensor | None
    fetched: Tensor | None = None
    fetched_ready: Any = None
    """The side stream's event after the copy back (CUDA), else None."""


def quantize(tensor: Tensor) -> tuple[Tensor, Tensor]:
    """``tensor`` as float8 e4m3 and its float32 scale (amax / 448), without a float32 copy of the tensor."""
    low, high = torch.aminmax(tensor.detach())
    scale = torch.clamp(torch.maximum(-low, high).float() / FP8_MAX, min=torch.finfo(torch.float32).tiny)
    return (tensor.detach() / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8), scale


def dequantize(stored: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    return stored.to(dtype) * scale.to(dtype)


class OffloadStore:
    """Saved-tensor hooks that keep the inputs of the checkpoints run through :meth:`checkpoint` in host memory.

    ``host_bytes`` is what the store holds in host memory now, ``peak_host_bytes`` the most it held."""

    def __init__(self, fp8: bool):
        self.fp8 = fp8
        self.host_bytes = 0
        self.peak_host_bytes = 0
        self._order: list[weakref.ref[Stored]] = []
        self._streams: dict[torch.device, Any] = {}

    def checkpoint(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``torch.utils.checkpoint`` (non-reentrant) whose saved inputs go through this store."""
        kwargs.setdefault("use_reentrant", False)
        with self.hooks():
            return checkpoint(function, *args, **kwargs)

    @contextmanager
    def hooks(self) -> Iterator[None]:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            yield

    def pack(self, tensor: Tensor) -> Stored | Tensor:
        """Start the copy of a layer input to host memory (fp8 if asked); small tensors stay as they are."""
        if not tensor.is_floating_point() or tensor.numel() < SMALL or (tensor.is_cpu and not self.fp8):
            return tensor
        source, scale = quantize(tensor) if self.fp8 else (tensor.detach(), None)
        stream = self._side_stream(tensor.device)
        if stream is None:
            host = source
        else:
            host = torch.empty(source.shape, dtype=source.dtype, pin_memory=True)
            stream.wait_stream(torch.cuda.current_stream(tensor.device))
            with torch.cuda.stream(stream):
                host.copy_(source, non_blocking=True)
            source.record_stream(stream)  # the allocator keeps it until the copy is done
        stored = Stored(host, tensor.dtype, tensor.device, scale)
        self._count_bytes(host.nbytes)
        weakref.finalize(stored, self._count_bytes, -host.nbytes)
        self._order.append(weakref.ref(stored))
        return stored

    def unpack(self, stored: Stored | Tensor) -> Tensor:
        """The tensor back on its device; starts the copy of the input that the backward needs next."""
        if isinstance(stored, Tensor):
            return stored
        if stored.fetched is None:
            self._fetch(stored)
        fetched, stored.fetched = stored.fetched, None
        assert fetched is not None
        if stored.fetched_ready is not None:
            compute = torch.cuda.current_stream(stored.device)
            compute.wait_event(stored.fetched_ready)
        self._prefetch_before(stored)
        return dequantize(fetched, stored.scale, stored.dtype) if stored.scale is not None else fetched

    def _fetch(self, stored: Stored) -> None:
        """Start the copy of ``stored`` back to its device (on the side stream; at once without one)."""
        stream = self._side_stream(stored.device)
        if stream is None:
            stored.fetched = stored.host
            return
        compute = torch.cuda.current_stream(stored.device)
        fetched = torch.empty(stored.host.shape, dtype=stored.host.dtype, device=stored.device)  # compute's pool
        stream.wait_stream(compute)
        with torch.cuda.stream(stream):
            fetched.copy_(stored.host, non_blocking=True)
            stored.fetched_ready = torch.cuda.Event()
            stored.fetched_ready.record(stream)
        fetched.record_stream(stream)
        stored.fetched = fetched

    def _prefetch_before(self, stored: Stored) -> None:
        """Fetch the entry packed just before ``stored`` (the next one the backward recomputes); forget the dead."""
        alive = [(ref, entry) for ref in self._order if (entry := ref()) is not None]
        self._order = [ref for ref, _ in alive]
        entries = [entry for _, entry in alive]
        index = next((i for i, entry in enumerate(entries) if entry is stored), None)
        if index:
            previous = entries[index - 1]
            if previous.fetched is None:
                self._fetch(previous)

    def _side_stream(self, device: torch.device) -> Any:
        """The copy stream of a CUDA ``device``; None elsewhere (nothing to copy, or no streams to copy on)."""
        if device.type != "cuda":
            return None
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device)
        return self._streams[device]

    def _count_bytes(self, delta: int) -> None:
        self.host_bytes += delta
        self.peak_host_bytes = max(self.peak_host_bytes, self.host_bytes)
