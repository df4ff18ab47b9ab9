"""Summing a kernel's partial results: ``[P, ...]`` fp32 partials -> their sum in the caller's dtype.

Kernels whose programs each cover part of a reduction (the scan's V-blocks each add their share
of dq and dk) write fp32 partials and leave the sum to the host. In PyTorch that is two passes,
``part.sum(0)`` (read the partials, write an fp32 sum) and ``.to(dtype)`` (read it again, write
the result), and with one partial the sum is a full copy. :func:`sum_partials` does it in one
pass: one program per block of output elements reads its P partials, adds them in fp32 and
stores the sum once, in the output dtype; a single partial is only cast. Many partials of a
small output (more partials than output blocks) go to PyTorch's reduction, which splits them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from scandsl import knobs

__all__ = ["sum_partials"]

_BLOCK = 1024


@triton.jit
def sum_partials_kernel(src, dst, P, M, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    ptr = src + offs  # 64-bit pointers: P * M may pass 2^31 elements
    for _ in range(P):
        acc += tl.load(ptr, mask=mask, other=0.0)
        ptr += M
    tl.store(dst + offs, acc.to(dst.dtype.element_ty), mask=mask)


def sum_partials(part: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``part.sum(0).to(dtype)`` in one pass (``part``: contiguous fp32 ``[P, *shape]``)."""
    if part.shape[0] == 1:
        return part[0].to(dtype)
    if part.device.type != "cuda" and not knobs.interpret():
        return part.sum(0).to(dtype)
    if part.dtype != torch.float32 or not part.is_contiguous():
        raise ValueError(f"sum_partials: contiguous float32 partials expected, got {part.dtype}")
    if part.shape[0] > triton.cdiv(part[0].numel(), _BLOCK):
        # more partials than output blocks (per-program partials of a small parameter gradient,
        # e.g. rwkv6's du: thousands of [H, K] partials): the kernel would run a few programs that
        # each walk every partial, where PyTorch's reduction splits them. H100, rwkv6 fwd+bwd:
        # 0.208 ms here against 0.020 for sum(0) (bench/results/gpu_ab_gla_bwd_run4.json)
        return part.sum(0).to(dtype)
    out = torch.empty(part.shape[1:], dtype=dtype, device=part.device)
    M = out.numel()
    if M:
        sum_partials_kernel[(triton.cdiv(M, _BLOCK),)](part, out, part.shape[0], M, BLOCK=_BLOCK)
    return out
