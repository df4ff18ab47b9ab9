"""Configs the GPU's compiler is known to build wrong are rejected by the search spaces, with
the evidence in the reason, so neither the autotuner nor a user's config can run them."""

import pytest
from scandsl.lowering import chunk_delta, chunk_scalar

from scandsl._core import CoreSig, Decay, Shape, Transition
from scandsl.testing import random_core_inputs

SHAPE = Shape(4, 4096, 16, 128, 128)


def test_chunk_scalar_rejects_the_sm90_shared_memory_fault():
    sig = CoreSig(decay=Decay.SCALAR)
    space = chunk_scalar.search_space(sig, SHAPE)
    bad = {
        **chunk_scalar.default_config(sig, SHAPE),
        "chunk": 64,
        "block_v": 16,
        "num_warps": 8,
        "num_stages": 1,
    }
    assert "sm_90" in space.valid(bad)
    # its neighbours ran correctly on the H100 and stay searchable
    for ok in ({"num_stages": 2}, {"fwd_mode": "split"}, {"block_v": 64}, {"chunk": 32}):
        assert space.valid({**bad, **ok}) is None
    assert space.valid(chunk_scalar.default_config(sig, SHAPE)) is None


def test_chunk_scalar_rejects_the_sm90_wrong_outputs():
    """chunk=64, block_v <= 32, num_stages=1: wrong outputs on the H100 at any warp count."""
    sig = CoreSig(decay=Decay.SCALAR)
    space = chunk_scalar.search_space(sig, SHAPE)
    base = {**chunk_scalar.default_config(sig, SHAPE), "chunk": 64, "num_stages": 1}
    for block_v in (16, 32):
        for warps in (4, 8):
            assert "sm_90" in space.valid({**base, "block_v": block_v, "num_warps": warps})
    assert space.valid({**base, "chunk": 128, "block_v": 32, "num_warps": 8}) is None


def test_chunk_scalar_rejects_the_sm90_backward_fault():
    """bwd_chunk=64 with bwd_num_stages=1: an illegal memory access in the backward on the H100
    (only that key changed from the default); chunks of 16 (the fp32 default) stay allowed."""
    sig = CoreSig(decay=Decay.SCALAR)
    space = chunk_scalar.search_space(sig, SHAPE)
    default = chunk_scalar.default_config(sig, SHAPE)
    for over in ({}, {"bwd_chunk": 128, "bwd_num_warps": 8}, {"bwd_num_warps": 8}):
        assert "sm_90" in space.valid({**default, "bwd_num_stages": 1, **over})
    assert space.valid({**default, "bwd_num_stages": 1, "bwd_chunk": 16}) is None
    assert space.valid(default) is None and default["bwd_num_warps"] == 4
    x = random_core_inputs(sig, B=1, T=8, H=1, K=16, V=16)
    with pytest.raises(ValueError, match="sm_90"):
        chunk_scalar.run(sig, x, {"bwd_num_stages": 1, "bwd_chunk": 64})


def test_chunk_delta_rejects_the_sm90_illegal_access():
    """chunk=64, bv=32, state_warps=4, num_stages=1: an illegal memory access on the H100, forward
    + backward, at 4 or 8 warps and out_bv 32 or 64; num_stages=2, bv=64, state_warps=8 ran."""
    sig = CoreSig(transition=Transition.DELTA)
    space = chunk_delta.search_space(sig, SHAPE)
    bad = {"chunk": 64, "bv": 32, "out_bv": 32, "bwd_bk": 64, "num_warps": 8, "state_warps": 4, "num_stages": 1,
           "bwd_warps": 8}  # fmt: skip
    for over in ({}, {"num_warps": 4}, {"out_bv": 64}, {"bwd_warps": 4}, {"bv": 16}):
        assert "sm_90" in space.valid({**bad, **over})
    for ok in ({"num_stages": 2}, {"bv": 64}, {"state_warps": 8}):
        assert space.valid({**bad, **ok}) is None
    # the sequential passes' own stages count as well as the per-chunk kernels'
    assert "sm_90" in space.valid({**bad, "num_stages": 2, "state_stages": 1})
    assert "sm_90" in space.valid({**bad, "num_stages": 1, "state_stages": 2})
    assert space.valid(chunk_delta.default_config(sig, SHAPE)) is None
    x = random_core_inputs(sig, B=1, T=8, H=1, K=16, V=16)
    with pytest.raises(ValueError, match="sm_90"):  # a user's config is refused too, before any launch
        chunk_delta.run(sig, x, bad)
