"""The two ceilings and the floor they give.

No version of a kernel runs much faster than the larger of

- **bytes / bandwidth** — every input read once, every output written once, over the
  device-to-device copy bandwidth *measured in the same run* (a large ``copy_``, counting
  bytes read plus bytes written);
- **FLOPs / matmul rate** — the recurrence's minimal arithmetic over the bf16 matrix
  rate measured in the same run (an 8192³ product on random data).

Minimal arithmetic, per step and head, for a state of ``n`` elements (``K·V`` for most
rows): update ``S += v kᵀ`` (2n) and read-out ``S q`` (2n) — ``4n`` forward; the backward
does about twice that (``dS`` update, ``dq``, ``dk``/``dv`` read-outs): ``8n``. Chunked
forms do more (the intra-chunk product), which is why the floor uses the minimum.
Bytes for forward + backward: the forward's, plus reading the inputs and ``do`` again and
writing one gradient per input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

__all__ = ["Ceilings", "measure_ceilings", "Work", "floor_ms", "tensor_bytes"]


@dataclass(frozen=True)
class Ceilings:
    copy_gbps: float  # GB/s, bytes read + written by a device-to-device copy
    matmul_tflops: float  # bf16 dense matmul rate

    def to_json(self) -> dict:
        return asdict(self)


def measure_ceilings(
    device: str | torch.device = "cuda", *, copy_bytes: int = 2 << 30, n: int = 8192
) -> Ceilings:
    """Measure both ceilings on ``device`` with ``triton.testing.do_bench`` medians."""
    from triton.testing import do_bench

    copy_gbps = _copy_rate(device, copy_bytes, do_bench)
    tflops = _matmul_rate(device, n, do_bench)
    torch.cuda.empty_cache()
    return Ceilings(copy_gbps=copy_gbps, matmul_tflops=tflops)


def _copy_rate(device, nbytes: int, do_bench) -> float:
    src = torch.randn(nbytes // 2, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def _matmul_rate(device, n: int, do_bench) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    return 2 * n**3 / (ms * 1e-3) / 1e12


@dataclass(frozen=True)
class Work:
    """What one call must move and compute, forward and forward + backward."""

    bytes_fwd: int
    bytes_fwd_bwd: int
    flops_fwd: float
    flops_fwd_bwd: float

    @classmethod
    def of(cls, inputs_bytes: int, output_bytes: int, tokens_heads: int, state_elems: int) -> Work:
        """``tokens_heads`` = B·T·H; ``state_elems`` = elements of one head's state(s)."""
        fwd_flops = 4.0 * tokens_heads * state_elems
        return cls(
            bytes_fwd=inputs_bytes + output_bytes,
            # forward, then: read inputs + do again, write one gradient per input
            bytes_fwd_bwd=(inputs_bytes + output_bytes) + (inputs_bytes + output_bytes + inputs_bytes),
            flops_fwd=fwd_flops,
            flops_fwd_bwd=3.0 * fwd_flops,
        )

    def to_json(self) -> dict:
        return asdict(self)


def floor_ms(work: Work, ceilings: Ceilings, mode: str) -> dict[str, float]:
    """``{"floor_ms", "memory_ms", "compute_ms"}`` for ``mode`` "fwd" or "fwd_bwd"."""
    nbytes = work.bytes_fwd if mode == "fwd" else work.bytes_fwd_bwd
    flops = work.flops_fwd if mode == "fwd" else work.flops_fwd_bwd
    memory_ms = nbytes / (ceilings.copy_gbps * 1e9) * 1e3
    compute_ms = flops / (ceilings.matmul_tflops * 1e12) * 1e3
    return {"floor_ms": max(memory_ms, compute_ms), "memory_ms": memory_ms, "compute_ms": compute_ms}


def tensor_bytes(*tensors) -> int:
    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
        elif isinstance(t, (tuple, list)):
            total += tensor_bytes(*t)
    return total
