"""fwd_cumsum="state" (key decay): the state walk sums the raw key log-gates of each chunk and
stores the sums for the kernels after it, in place of the chunk_local_cumsum pass; on the
interpreter: outputs, final states and every gradient against ``core_reference`` (the backward
reads the walk's sums); its forward equals chunk_local_cumsum's in
``test_chunk_vector_fused_cumsum.py::test_sums_equal_kernel_mode``.

Buffers are NaN-poisoned, so a row or column the walk fails to store shows. Several V-blocks
(only the first stores), K in several K-blocks, awkward T (1, 67), varlen with sequences of 0, 1,
5 and 31 steps, outer decay, fp16.
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


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(chunk_vector, "POISON_OUTPUTS", True)


def _state(**over) -> dict:
    """COARSE with the walk's sums and 16-wide state tiles: K=24 / V=40 take 2 x 3 programs a head."""
    return {**COARSE, "fwd_mode": "pairs", "fwd_cumsum": "state", "state_BK": 16, "state_BV": 16, **over}


@pytest.mark.parametrize("name", ["key", "key_before"])
def test_state_sums_match_reference(name):
    sig = SIGS[name]
    x = random_core_inputs(sig, B=2, T=67, H=1, K=24, V=40, seed=71, requires_grad=True)
    _compare(sig, x, _state())
    _compare(sig, random_core_inputs(sig, B=1, T=1, H=2, K=16, V=16, seed=72, requires_grad=True), _state())


def test_state_sums_outer_decay():
    """Outer decay: the walk stores the key sums, the value sums still come from the cumsum kernel."""
    sig = SIGS["outer"]
    x = random_core_inputs(sig, B=1, T=37, H=1, K=24, V=40, seed=73, requires_grad=True)
    _compare(sig, x, {**COARSE, "fwd_cumsum": "state", "state_BV": 16})


def test_state_sums_varlen_half():
    sig = SIGS["key_before"]
    cu = torch.tensor([0, 0, 1, 6, 37], dtype=torch.int32)
    x = random_core_inputs(sig, T=37, H=1, K=24, V=40, cu_seqlens=cu, seed=74, requires_grad=True)
    _compare(sig, x, _state())
    x = random_core_inputs(SIGS["key"], B=1, T=37, H=1, K=24, V=40, seed=75, dtype=torch.float16, requires_grad=True)
    _compare(SIGS["key"], x, _state(), dtype=torch.float16)


def test_state_sums_config():
    shape = Shape(4, 4096, 16, 128, 128)
    space = chunk_vector.search_space(SIGS["key"], shape)
    assert space.valid({**chunk_vector.default_config(SIGS["key"], shape), "fwd_cumsum": "state"}) is None
    value = SIGS["value"]
    reason = chunk_vector.search_space(value, shape).valid(
        {**chunk_vector.default_config(value, shape), "fwd_cumsum": "state"}
    )
    assert "no key log-gates" not in reason and "VALUE" in reason
