"""lowering/_partials.py: the one-pass sum of a kernel's fp32 partials, cast to the caller's dtype."""

from __future__ import annotations

import pytest
import torch
from scandsl.lowering import _partials


@pytest.mark.parametrize("P, shape", [(1, (3, 5)), (2, (7,)), (5, (2, 3, 171)), (3, (0, 4))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sum_partials_matches_sum_then_cast(monkeypatch, P, shape, dtype):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the kernel path on the CPU
    part = torch.randn(P, *shape, generator=torch.Generator().manual_seed(P))
    got = _partials.sum_partials(part, dtype)
    assert got.dtype == dtype and got.shape == shape
    torch.testing.assert_close(got, part.sum(0).to(dtype), rtol=1e-6, atol=1e-6)


def test_sum_partials_rejects_what_it_cannot_read(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="contiguous float32"):
        _partials.sum_partials(torch.randn(2, 4, 3).transpose(1, 2), torch.float32)
