"""Forward and backward of one attention layer over rows of one whole document each, kernel by kernel: what the
one-document rule (``toolkit.model.attention.cudnn_for_one_document_rows``: sdpa with cuDNN instead of varlen FA2 on
Hopper) and flash-attn-4's place first in ``auto`` rest on. A shape's heads (llama3-8b: 32 query, 8 K/V, dim 128),
bf16 on CUDA; on CPU the same code in float32 over the reference varlen kernel, to check the script.

Kernels: ``varlen_fa2`` (the toolkit's ``torch_varlen`` adapter over PyTorch's varlen_attn, K/V repeated where
that torch has no ``enable_gqa``), ``sdpa_cudnn`` and ``sdpa_flash`` (sdpa restricted to that backend, K/V heads
grouped), ``flash_attn_4`` (where flash-attn-4 imports); ``--kernels`` picks some. A kernel that cannot run the shape
is a row with its error. TFLOP/s counts causal attention as ``step_flops`` does (forward and backward, recomputation
not counted); ``first_s`` is the first, untimed pass (a JIT-compiled kernel's compile included).

    python benchmarks/attention_kernels.py --shape llama3-8b --seq-len 8192 32768 65536
    python benchmarks/attention_kernels.py --kernels varlen_fa2 flash_attn_4 --seq-len 32768 131072 --repeats 3
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import SHAPES
from toolkit.errors import command_parser, positive_int

KERNELS = ("varlen_fa2", "sdpa_cudnn", "sdpa_flash", "flash_attn_4")
"""Every kernel's name, in the order they run (the CPU has ``varlen_fa2`` alone)."""
Attention = Callable[[Any, Any, Any, Any], Any]
"""``(query, key, value, cu_seqlens) -> output`` on ``(B, H, L, D)`` query and ``(B, H_kv, L, D)`` key/value."""


def _kernels(device: str) -> dict[str, Attention]:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from toolkit.model.attention_varlen import varlen_attention

    def varlen(q, k, v, cu):
        kernel: Callable[..., Any]
        if device == "cuda":
            from torch.nn.attention.varlen import varlen_attn as kernel
        else:
            from tests.varlen_reference import reference_varlen_attn

            kernel = reference_varlen_attn
        adapter = varlen_attention(kernel, one_document=lambda query: False)
        positions = torch.arange(q.shape[2], device=q.device).expand(q.shape[0], -1)
        return adapter(None, q, k, v, None, position_ids=positions, cu_seq_lens_q=cu, max_length_q=q.shape[2])[0]

    def sdpa(backend: SDPBackend) -> Attention:
        def run(q, k, v, cu):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return run

    def flash_attn_4(q, k, v, cu):
        from flash_attn.cute import flash_attn_varlen_func  # type: ignore[import-not-found]  # optional: '.[fa4]'

        flat = [t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3]) for t in (q, k, v)]
        length = q.shape[2]
        return flash_attn_varlen_func(*flat, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=length,
                                      max_seqlen_k=length, causal=True)[0]

    kernels: dict[str, Attention] = {"varlen_fa2": varlen}
    if device == "cuda":
        kernels |= {"sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION), "sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION),
                    "flash_attn_4": flash_attn_4}
    return kernels


def time_kernel(kernel: Attention, shape: str, seq_len: int, rows: int, repeats: int, device: str) -> dict:
    """Median seconds of ``repeats`` forward+backward passes (after one warm-up, ``first_s``) and the TFLOP/s they
    give."""
    import torch

    from toolkit.plan.memory import shape_from_config, step_flops

    config = SHAPES[shape]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    dim = config["hidden_size"] // heads
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q = torch.randn(rows, heads, seq_len, dim, device=device, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(rows, kv_heads, seq_len, dim, device=device, dtype=dtype, requires_grad=True)
            for _ in range(2))
    cu = torch.arange(0, rows * seq_len + 1, seq_len, device=device, dtype=torch.int32)
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        kernel(q, k, v, cu).float().sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    model = shape_from_config(config)
    attention = (step_flops(model, seq_len, seq_len) - step_flops(model, seq_len, 0)) / model.layers * rows
    median = statistics.median(seconds[1:])
    return {"seconds": median, "spread": [min(seconds[1:]), max(seconds[1:])], "tflops": attention / median / 1e12,
            "first_s": seconds[0]}


def main(argv: list[str] | None = None) -> list[dict]:
    import torch

    parser = command_parser(__doc__, "benchmarks/attention_kernels.py")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    parser.add_argument("--seq-len", type=positive_int, nargs="+", default=[8192, 32768])
    parser.add_argument("--rows", type=positive_int, default=1, help="rows (one document each) per call")
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, help="these kernels only (default: every one "
                        "this device offers)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    offered = _kernels(device)
    missing = sorted(set(args.kernels or ()) - set(offered))
    if missing:
        parser.error(f"not on {device}: {', '.join(missing)}")
    chosen = {name: offered[name] for name in args.kernels or offered}
    results = []
    for seq_len in args.seq_len:
        for name, kernel in chosen.items():
            row: dict[str, Any] = {"kernel": name, "seq_len": seq_len, "rows": args.rows}
            try:
                row |= time_kernel(kernel, args.shape, seq_len, args.rows, args.repeats, device)
            except Exception as error:  # a kernel that cannot run this shape here is a result, not a crash
                row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
            results.append(row)
            print(json.dumps(row), flush=True)
    return results


if __name__ == "__main__":
    main()
