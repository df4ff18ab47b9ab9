"""lowering/_partials.py: the one-pass sum of a kernel's fp32 partials, cast to the caller's dtype."""

from __future__ import annotations

import pytest
import torch
from scandsl.lowering import _partials


class _Spy:
    """Stands in for the kernel: records launches, runs the real one."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


# (P, shape, whether the kernel runs): P partials of an output of M elements in blocks of 1024;
# more partials than blocks go to PyTorch's reduction
CASES = [(1, (3, 5), False), (2, (7,), False), (5, (3, 2100), True), (3, (2, 3, 700), True),
         (40, (4, 5), False), (3, (0, 4), True)]  # fmt: skip


@pytest.mark.parametrize("P, shape, kernel", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sum_partials_matches_sum_then_cast(monkeypatch, P, shape, kernel, dtype):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the kernel path on the CPU
    spy = _Spy(_partials.sum_partials_kernel)
    monkeypatch.setattr(_partials, "sum_partials_kernel", spy)
    part = torch.randn(P, *shape, generator=torch.Generator().manual_seed(P))
    got = _partials.sum_partials(part, dtype)
    assert got.dtype == dtype and got.shape == shape
    torch.testing.assert_close(got, part.sum(0).to(dtype), rtol=1e-6, atol=1e-6)
    assert spy.launches == (kernel and got.numel() > 0)


def test_sum_partials_rejects_what_it_cannot_read(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="contiguous float32"):
        _partials.sum_partials(torch.randn(2, 4, 3).transpose(1, 2), torch.float32)
