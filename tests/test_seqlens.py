"""cu_seqlens on the host: one device-to-host copy per tensor and version, not one a call."""

from __future__ import annotations

import gc

import pytest
import torch

import scandsl._seqlens as seqlens
from scandsl import ops


@pytest.fixture(autouse=True)
def memoise_cpu(monkeypatch):
    """The memo serves device tensors; here it is exercised on CPU ones."""
    monkeypatch.setattr(seqlens, "MEMOISE_CPU", True)


def test_bounds_are_memoised_per_tensor():
    cu = torch.tensor([0, 3, 7])
    first = seqlens.host_bounds(cu)
    assert first == (0, 3, 7) and all(type(b) is int for b in first)
    assert seqlens.host_bounds(cu) is first  # no second copy
    assert seqlens.host_bounds(torch.tensor([0, 3, 7])) is not first  # another tensor, its own entry


def test_an_in_place_write_is_seen():
    cu = torch.tensor([0, 3, 7])
    assert seqlens.host_bounds(cu) == (0, 3, 7)
    cu[1] = 5
    assert seqlens.host_bounds(cu) == (0, 5, 7)
    calls = []
    assert seqlens.derived(cu, "x", lambda: calls.append(1) or "made") == "made"
    assert seqlens.derived(cu, "x", lambda: calls.append(1) or "again") == "made"
    cu.add_(0)  # any in-place op bumps the version: derived values are rebuilt
    assert seqlens.derived(cu, "x", lambda: calls.append(1) or "again") == "again"
    assert len(calls) == 2


def test_entries_die_with_their_tensor():
    cu = torch.tensor([0, 2, 4])
    seqlens.host_bounds(cu)
    key = id(cu)
    assert key in seqlens._MEMO
    del cu
    gc.collect()
    assert key not in seqlens._MEMO


def test_inference_tensors_are_read_every_time():
    with torch.inference_mode():
        cu = torch.tensor([0, 1, 4])
    assert seqlens.host_bounds(cu) == (0, 1, 4)
    assert id(cu) not in seqlens._MEMO


def test_a_tensor_made_invalid_in_place_is_still_refused():
    q = torch.randn(1, 6, 2, 4)
    v = torch.randn(1, 6, 2, 4)
    cu = torch.tensor([0, 2, 6])
    ops.linear_attn(q, q, v, cu_seqlens=cu, strategy="reference")
    cu[1] = 7  # decreasing now
    with pytest.raises(ValueError, match="cu_seqlens"):
        ops.linear_attn(q, q, v, cu_seqlens=cu, strategy="reference")


@pytest.mark.parametrize(
    ("op", "strategy"), [("gla", "chunk"), ("deltanet", "chunk"), ("mamba2", "sequential")]
)
def test_a_second_varlen_call_copies_nothing_to_the_host(op, strategy, monkeypatch):
    """The layers of a training step share one cu_seqlens: only the first call reads it back."""
    from scandsl.bench._inputs import make_op_inputs

    from scandsl._core import Shape

    fn = ops.TAXONOMY[op][0]
    args = make_op_inputs(op, Shape(1, 21, 2, 16, 16), torch.float32, "cpu", seed=0)
    cu = torch.tensor([0, 5, 5, 21])
    first = fn(**args, cu_seqlens=cu, strategy=strategy)

    def no_copy(self):
        raise AssertionError("cu_seqlens read back to the host again")

    monkeypatch.setattr(torch.Tensor, "tolist", no_copy)
    again = fn(**args, cu_seqlens=cu, strategy=strategy)
    assert torch.equal(first[0], again[0])


def test_cpu_tensors_are_read_every_call_by_default(monkeypatch):
    """A CPU cu_seqlens costs no sync to read, and may be written through a NumPy view,
    which no version counter sees: it is never memoised."""
    monkeypatch.setattr(seqlens, "MEMOISE_CPU", False)
    cu = torch.tensor([0, 3, 7])
    assert seqlens.host_bounds(cu) == (0, 3, 7)
    cu.numpy()[1] = 5
    assert seqlens.host_bounds(cu) == (0, 5, 7)
