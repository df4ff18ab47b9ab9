"""fwd_cumsum="fused" (KEY decay, fwd_mode="pairs"): the forward's kernels sum the raw log-gates of
each chunk themselves, on the interpreter: outputs, final states and every gradient against
``core_reference`` (the backward runs the cumsum kernel the forward left out), and the forward
equal to the default mode's.

Buffers are NaN-poisoned. Awkward T (1, 37, 67: partial last chunks, whose padded rows must add
nothing to the sums), K=24 / 40, varlen with sequences of 0, 1, 5, 31 steps, strong decays, fp16.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402
from scandsl.lowering import chunk_vector  # noqa: E402

from scandsl._core import Shape  # noqa: E402
from scandsl.testing import random_core_inputs  # noqa: E402
from tests.lowering.test_chunk_vector import COARSE, SIGS, _compare  # noqa: E402

KEYS = {"key": SIGS["key"], "key_before": SIGS["key_before"]}


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(chunk_vector, "POISON_OUTPUTS", True)


def _fused(diag: str = "fold", **over) -> dict:
    return {**COARSE, "fwd_mode": "pairs", "fwd_diag": diag, "fwd_cumsum": "fused", **over}


@pytest.mark.parametrize("name", list(KEYS))
def test_fused_matches_reference(name):
    """T=67 (a partial last chunk, its last sub-chunk partial too), K=24 / V=40 in 16-wide K-slices,
    with the final state; and a single step."""
    sig = KEYS[name]
    x = random_core_inputs(sig, B=1, T=67, H=1, K=24, V=40, seed=61, requires_grad=True)
    _compare(sig, x, _fused(fwd_BK=16, pairs_BK=16))
    _compare(sig, random_core_inputs(sig, B=1, T=1, H=1, K=16, V=16, seed=62, requires_grad=True), _fused())


def test_fused_cols_and_several_sub_chunks():
    """fwd_diag="cols" (its query tile summed, its key rows gathered) at K=40, and chunk 64 in four
    sub-chunks (earlier row blocks each rebased on a reference row taken from the summed tile)."""
    sig = KEYS["key_before"]
    x = random_core_inputs(sig, B=1, T=37, H=1, K=40, V=16, seed=63, requires_grad=True)
    _compare(sig, x, _fused("cols"))
    x = random_core_inputs(sig, B=1, T=100, H=1, K=16, V=16, seed=64, requires_grad=True)
    _compare(sig, x, _fused(chunk=64, diag_BK=16, dqk_BK=16))


@pytest.mark.parametrize("name", list(KEYS))
def test_fused_varlen(name):
    """Packed sequences of 0, 1, 5, 31 steps: chunk starts from the chunk map, chunks ending
    inside a sub-chunk."""
    sig = KEYS[name]
    cu = torch.tensor([0, 0, 1, 6, 37], dtype=torch.int32)
    x = random_core_inputs(sig, T=37, H=1, K=24, V=40, cu_seqlens=cu, seed=65, requires_grad=True)
    _compare(sig, x, _fused())


def test_fused_strong_decay():
    """Log-decays in [-8, -5] a step: a sum rebased the wrong way overflows."""
    sig = KEYS["key_before"]
    x = random_core_inputs(sig, B=1, T=67, H=1, K=24, V=40, seed=66)
    x.gk = -5.0 - 3.0 * torch.rand(x.gk.shape, generator=torch.Generator().manual_seed(67))
    for t in (x.q, x.k, x.v, x.gk, x.initial_state):
        t.requires_grad_(True)
    _compare(sig, x, _fused())


def test_fused_half_inputs():
    """16-bit tensor-core operands (fp16: the interpreter's bf16 tl.dot is wrong, Triton 3.9)."""
    sig = KEYS["key"]
    x = random_core_inputs(sig, B=1, T=37, H=1, K=24, V=40, seed=68, dtype=torch.float16, requires_grad=True)
    _compare(sig, x, _fused(), dtype=torch.float16)


@pytest.mark.parametrize("mode", ["fused", "state"])  # "state": test_chunk_vector_state_sums.py
@pytest.mark.parametrize("name", list(KEYS))
def test_sums_equal_kernel_mode(name, mode):
    """The same forward as with chunk_local_cumsum, to fp32 rounding (the sums are the same sums)."""
    sig = KEYS[name]
    cu = torch.tensor([0, 3, 40, 69], dtype=torch.int32)
    x = random_core_inputs(sig, T=69, H=1, K=24, V=40, cu_seqlens=cu, seed=69)
    o_ref, ht_ref = chunk_vector.run(sig, x, _fused(fwd_cumsum="kernel"))
    o, ht = chunk_vector.run(sig, x, _fused(fwd_cumsum=mode, state_BV=16))
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ht, ht_ref, rtol=1e-5, atol=1e-5)


def test_fused_config():
    shape = Shape(4, 4096, 16, 128, 128)
    key = SIGS["key"]
    space = chunk_vector.search_space(key, shape)
    base = chunk_vector.default_config(key, shape)
    assert base["fwd_cumsum"] == "state"  # the state walk stores the sums (test_chunk_vector_state_sums.py)
    assert "fwd_cumsum" in {p.name for p in space.params}
    assert space.valid({**base, "fwd_cumsum": "fused"}) is None
    assert "fwd_mode='pairs'" in space.valid({**base, "fwd_cumsum": "fused", "fwd_mode": "split"})
    assert "fwd_cumsum" in space.valid({**base, "fwd_cumsum": "registers"})
    value = SIGS["value"]
    reason = chunk_vector.search_space(value, shape).valid(
        {**chunk_vector.default_config(value, shape), "fwd_cumsum": "fused"}
    )
    assert "KEY decay" in reason
