"""The chunked loss equals the plain loss in value and gradients, and never saves full-vocabulary logits."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from toolkit.memory.chunked_loss import causal_lm_loss, loss_kernel, shifted_lm_loss, target_loss

BATCH, LENGTH, HIDDEN, VOCAB = 2, 37, 16, 50


def _inputs(seed: int = 0, ignored: float = 0.0) -> tuple[torch.Tensor, nn.Linear, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(BATCH, LENGTH, HIDDEN, generator=gen, requires_grad=True)
    head = nn.Linear(HIDDEN, VOCAB, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(VOCAB, HIDDEN, generator=gen) * 0.3)
    labels = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=gen)
    labels[torch.rand(BATCH, LENGTH, generator=gen) < ignored] = -100
    return hidden, head, labels


def _loss_and_grads(chunk_size: int | None, ignored: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                       torch.Tensor]:
    hidden, head, labels = _inputs(ignored=ignored)
    loss, count = causal_lm_loss(hidden, head, labels, chunk_size)
    loss.backward()
    assert hidden.grad is not None and head.weight.grad is not None
    return loss.detach(), count, hidden.grad, head.weight.grad


@pytest.mark.parametrize("chunk_size", [1, 8, 12, 72, 1000])  # 72 = B * (L - 1) divides exactly
@pytest.mark.parametrize("ignored", [0.0, 0.4])
def test_chunked_equals_plain(chunk_size: int, ignored: float) -> None:
    plain = _loss_and_grads(None, ignored)
    chunked = _loss_and_grads(chunk_size, ignored)
    assert chunked[0].dtype == torch.float32 and chunked[0].dim() == 0
    assert chunked[1].item() == plain[1].item()
    for a, b in zip(plain, chunked, strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-5, rtol=1e-5)


def test_count_and_value_match_hf_shift() -> None:
    hidden, head, labels = _inputs(ignored=0.5)
    loss, count = causal_lm_loss(hidden, head, labels, chunk_size=5)
    expected_count = (labels[:, 1:] != -100).sum()
    mean = nn.functional.cross_entropy(head(hidden)[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
    assert count.item() == expected_count.item()
    torch.testing.assert_close(loss / count, mean, atol=1e-5, rtol=1e-5)


def test_all_labels_ignored_keeps_head_in_graph() -> None:
    hidden, head, labels = _inputs()
    labels.fill_(-100)
    loss, count = causal_lm_loss(hidden, head, labels, chunk_size=8)
    loss.backward()
    assert count.item() == 0 and loss.item() == 0.0
    assert head.weight.grad is not None and head.weight.grad.abs().sum().item() == 0.0


def test_a_micro_batch_without_targets_takes_the_chunked_loss_not_the_fused_kernel() -> None:
    """Liger's kernel divides by its number of rows (ZeroDivisionError on none in liger-kernel 0.8.5, seen on an
    H200); a stand-in does the same. It runs where there are targets; without any the chunked loss runs: exactly 0,
    zero gradients, still connected to the graph."""
    hidden, head, labels = _inputs(ignored=0.4)
    flat_hidden, flat_labels = hidden[:, :-1].reshape(-1, HIDDEN), labels[:, 1:].reshape(-1)
    calls: list[int] = []

    def fused(kept_hidden: torch.Tensor, kept_labels: torch.Tensor) -> torch.Tensor:
        calls.append(kept_labels.numel())
        rows_per_chunk = kept_labels.numel() // kept_labels.numel()
        return nn.functional.cross_entropy(head(kept_hidden), kept_labels, reduction="sum") * rows_per_chunk

    kept = flat_labels != -100
    loss = target_loss(flat_hidden[kept], head, flat_labels[kept], 8, fused)
    expected, count = causal_lm_loss(hidden, head, labels, chunk_size=8)
    assert calls == [count.item()] and count.item() > 0
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)

    none = torch.zeros_like(kept)
    with pytest.raises(ZeroDivisionError):
        fused(flat_hidden[none], flat_labels[none])
    calls.clear()
    loss = target_loss(flat_hidden[none], head, flat_labels[none], 8, fused)
    assert calls == [] and loss.dtype == torch.float32 and loss.item() == 0.0
    loss.backward()
    assert hidden.grad is not None and head.weight.grad is not None
    assert hidden.grad.abs().sum().item() == 0.0 and head.weight.grad.abs().sum().item() == 0.0


def _largest_saved_tensor(chunk_size: int | None) -> int:
    hidden, head, labels = _inputs()
    sizes: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        causal_lm_loss(hidden, head, labels, chunk_size)
    return max(sizes)


def test_graph_never_saves_full_logits() -> None:
    positions = BATCH * (LENGTH - 1)
    assert _largest_saved_tensor(None) >= positions * VOCAB
    assert _largest_saved_tensor(8) < positions * VOCAB / 4


def test_shifted_labels_give_the_same_loss() -> None:
    hidden, head, labels = _inputs(ignored=0.3)
    loss, count = causal_lm_loss(hidden, head, labels, chunk_size=7)
    shift_labels = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]  # as sequence-parallel loaders do
    shifted, shifted_count = shifted_lm_loss(hidden, head, shift_labels, chunk_size=7)
    assert shifted_count.item() == count.item()
    torch.testing.assert_close(shifted, loss, atol=1e-5, rtol=1e-5)


def _partitioned(head: nn.Linear) -> nn.Linear:
    """``head`` as DeepSpeed ZeRO-3 leaves it outside its forward: an empty placeholder weight with a ``ds_id``,
    the whole weight put back only while the head runs (ZeRO-3's gather and release hooks)."""
    full = head.weight.detach().clone()
    head.weight = nn.Parameter(torch.empty(0))
    head.weight.ds_id = 0  # type: ignore[attr-defined]  # DeepSpeed adds it
    head.register_forward_pre_hook(lambda module, args: setattr(module.weight, "data", full))
    head.register_forward_hook(lambda module, args, output: setattr(module.weight, "data", torch.empty(0)))
    return head


def test_loss_kernel_falls_back_to_chunked_for_a_partitioned_head(monkeypatch) -> None:
    hidden, head, labels = _inputs(ignored=0.3)
    with torch.no_grad():
        expected, _ = causal_lm_loss(hidden, head, labels, chunk_size=None)
    assert loss_kernel(head, on_cuda=False) == ("chunked", "no CUDA device")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert loss_kernel(head, on_cuda=True) == ("chunked", "liger-kernel is not installed")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # as if liger-kernel were installed
    assert loss_kernel(head, on_cuda=True) == ("liger", "liger-kernel's fused linear cross-entropy")
    assert loss_kernel(nn.Sequential(head), on_cuda=True)[0] == "chunked"
    partitioned = _partitioned(head)
    assert loss_kernel(partitioned, on_cuda=True) == (
        "chunked", "the head weight is partitioned by DeepSpeed ZeRO-3; Liger reads it directly")
    monkeypatch.undo()
    with torch.no_grad():  # the chunked loss calls the head, whose hooks gather the weight
        loss, _ = causal_lm_loss(hidden, partitioned, labels, chunk_size=8)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
