"""The lean RMSNorm: transformers' Llama norm to the bit in the forward and in the input's gradient, in chunks of
rows, keeping the input as it came (no float32 copy) for the backward; a bf16 Llama routes its norms through it, and a
layer's step peaks as much lower as the plan says."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

import toolkit.memory.lean_norm as lean_norm
from benchmarks.context_probe import LiveBytes, Probe, measure_step
from benchmarks.gpu_check_probe import planned as plan
from benchmarks.harness import SHAPES
from tests.devices import DEVICES
from tests.micro_models import micro_config
from toolkit.memory.lean_norm import LeanNormForward, LeanRMSNorm, enable_lean_rmsnorm
from toolkit.plan.memory import GIB

HIDDEN = 64


def _norm(dtype: torch.dtype) -> LlamaRMSNorm:
    norm = LlamaRMSNorm(HIDDEN, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(HIDDEN, generator=torch.Generator().manual_seed(1)))
    return norm.to(dtype)


def _saved_bytes(run) -> int:
    """Bytes of the tensors autograd keeps for the backward while ``run()`` builds the graph (each storage once)."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(seen.values())


def _agree(ours: torch.Tensor, theirs: torch.Tensor, device: str) -> None:
    """Bit for bit on the CPU; within bf16's rounding on CUDA, whose reduction kernels may split a row differently
    for tensors of other sizes (the chunks)."""
    assert ours.dtype == theirs.dtype
    if device == "cpu":
        assert torch.equal(ours, theirs)
    else:
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32])
def test_forward_and_gradients_are_transformers_norms_over_chunks(weight_dtype: torch.dtype, device: str,
                                                                  monkeypatch) -> None:
    """13 rows in chunks of 5: the output and the input's gradient equal transformers' bit for bit; the weight's
    gradient too in bf16, and within float32 summation order for a float32 weight (a norm trained beside LoRA)."""
    monkeypatch.setattr(lean_norm, "CHUNK_ROWS", 5)
    norm = _norm(weight_dtype).to(device)
    generator = torch.Generator().manual_seed(0)
    hidden = (3 * torch.randn(2, 13, HIDDEN, generator=generator)).to(device, torch.bfloat16)
    grad = torch.randn(2, 13, HIDDEN, generator=generator).to(device, torch.result_type(norm.weight, hidden))
    theirs_in, ours_in = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    theirs = norm(theirs_in)
    theirs.backward(grad)
    assert norm.weight.grad is not None
    their_weight_grad, norm.weight.grad = norm.weight.grad.clone(), None
    ours = LeanRMSNorm.apply(ours_in, norm.weight, norm.variance_epsilon)
    ours.backward(grad)
    _agree(ours, theirs, device)
    assert ours_in.grad is not None and theirs_in.grad is not None
    _agree(ours_in.grad, theirs_in.grad, device)
    assert norm.weight.grad is not None
    if weight_dtype == torch.bfloat16:
        _agree(norm.weight.grad, their_weight_grad, device)
    else:
        torch.testing.assert_close(norm.weight.grad, their_weight_grad, rtol=1e-5, atol=1e-4)


def test_the_backward_keeps_the_input_as_it_came_and_one_float_a_row() -> None:
    """transformers' norm keeps a float32 copy of a bf16 input (and the normalised rows); this one keeps the input
    itself and a float32 reciprocal RMS per row."""
    norm = _norm(torch.bfloat16)
    hidden = torch.randn(4, 256, HIDDEN).to(torch.bfloat16).requires_grad_()
    rows = 4 * 256
    theirs = _saved_bytes(lambda: norm(hidden))
    ours = _saved_bytes(lambda: LeanRMSNorm.apply(hidden, norm.weight, norm.variance_epsilon))
    assert theirs >= rows * HIDDEN * (4 + 2)
    assert ours == rows * HIDDEN * 2 + rows * 4 + HIDDEN * 2  # the input, the reciprocal RMS, the weight


def test_the_backward_holds_one_chunk_of_float32_at_a_time(monkeypatch) -> None:
    """4096 rows in chunks of 256: the most bytes alive at once from the forward through the backward (the probe's
    live-tensor count, what a GPU allocator would report) is under a third of transformers' norm's."""
    monkeypatch.setattr(lean_norm, "CHUNK_ROWS", 256)
    norm = _norm(torch.bfloat16)
    hidden = torch.randn(1, 4096, HIDDEN).to(torch.bfloat16)
    grad = torch.randn(1, 4096, HIDDEN).to(torch.bfloat16)
    peaks = []
    for forward in (norm, lambda x: LeanRMSNorm.apply(x, norm.weight, norm.variance_epsilon)):
        with LiveBytes() as tracker:  # the input and the incoming gradient made in it: their views count once
            leaf, incoming = hidden.clone().requires_grad_(), grad.clone()
            forward(leaf).backward(incoming)
        peaks.append(tracker.peak)
    rows = 4096 * HIDDEN
    # input, incoming gradient, output; then the float32 copy kept and three float32 temporaries
    assert peaks[0] >= rows * (3 * 2 + 4 + 3 * 4)
    # input, incoming gradient, output, the input's gradient, a float32 a row; float32 temporaries of one chunk
    assert peaks[1] <= rows * (4 * 2 + 4 / HIDDEN) + 5 * 256 * HIDDEN * 4
    assert peaks[1] < peaks[0] / 2


@pytest.mark.parametrize("device", DEVICES)
def test_a_bf16_llama_routes_its_norms_through_it_and_trains_alike(device: str) -> None:
    """Every norm of a tiny bf16 Llama (two a layer and the last) is routed, and a bf16 forward with gradients runs
    each of them through the lean norm once; the loss and every gradient equal the model's own; without gradients,
    or in float32, the norms' own forward runs."""
    config = micro_config(vocab_size=128, hidden_size=HIDDEN, max_position_embeddings=64)
    torch.manual_seed(0)
    theirs = LlamaForCausalLM(config).bfloat16().to(device)  # type: ignore[arg-type]  # transformers' wrapped .to
    ours = LlamaForCausalLM(config).bfloat16().to(device)  # type: ignore[arg-type]
    ours.load_state_dict(theirs.state_dict())
    assert enable_lean_rmsnorm(ours) == 5 and enable_lean_rmsnorm(ours) == 5  # twice: still routed once
    assert all(isinstance(module.forward, LeanNormForward) and not isinstance(module.forward.forward, LeanNormForward)
               for module in ours.modules() if isinstance(module, LlamaRMSNorm))
    norms = sum(isinstance(module, LlamaRMSNorm) for module in ours.modules())
    assert norms == 2 * config.num_hidden_layers + 1
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(0)).to(device)
    calls = {"lean": 0}
    original = LeanRMSNorm.apply

    def counted(*args):
        calls["lean"] += 1
        return original(*args)

    their_loss = theirs(input_ids=ids, labels=ids).loss
    their_loss.backward()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LeanRMSNorm, "apply", counted)
        our_loss = ours(input_ids=ids, labels=ids).loss
        our_loss.backward()
        assert calls["lean"] == norms  # the bf16 training step: every norm's forward once through the lean one
        for (name, theirs_param), ours_param in zip(theirs.named_parameters(), ours.parameters(), strict=True):
            assert theirs_param.grad is not None and ours_param.grad is not None, name
            _agree(ours_param.grad, theirs_param.grad, device)
        _agree(our_loss.detach(), their_loss.detach(), device)

        calls["lean"] = 0
        with torch.no_grad():
            ours(input_ids=ids)
        ours.float()(input_ids=ids, labels=ids).loss.backward()
    assert calls["lean"] == 0


def test_a_layers_step_grows_per_token_as_the_plan_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """One bf16 step of a LoRA layer of the 8B proportions (checkpointing, 16 MLP tiles), counted by the probe's live
    tensors at 4096 and 8192 tokens, the lean norm working through 1024 rows at a time: per token, the peak grows
    within 10% of the plan's allocated figure, with the lean norm (about 20 bytes per hidden unit: no float32 copy,
    the backward's temporaries one chunk's) and with transformers' (about 40)."""
    monkeypatch.setattr(lean_norm, "CHUNK_ROWS", 1024)  # more than one chunk at these lengths, as at 512K
    hidden = SHAPES["8b-ratios"]["hidden_size"]
    for flag in (True, False):
        measured, planned = [], []
        for tokens in (4096, 8192):
            probe = Probe(shape="8b-ratios", seq_len=tokens, layers_total=4, tiles=16, loss_chunk=4096, device="cpu",
                          bf16=True, lean_norm=flag)
            measured.append(measure_step(probe, 1)["device_bytes"])
            planned.append(plan("8b-ratios", 1, tokens, checkpointing=True, tiles=16, loss_chunk=4096,
                                lean_norm=flag)["plan_gib"] * GIB)  # as gpu-check's section 5 plans its probe
        growth, plan_growth = (measured[1] - measured[0]) / 4096, (planned[1] - planned[0]) / 4096
        assert abs(plan_growth / growth - 1) < 0.10, (flag, growth / hidden, plan_growth / hidden)
        assert (18 if flag else 38) < growth / hidden < (24 if flag else 44), growth / hidden


