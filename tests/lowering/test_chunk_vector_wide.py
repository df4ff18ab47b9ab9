"""``infer_wide`` (KEY decay, fwd_mode="pairs"): without gradients the state walk runs at chunks of
twice the score chunk and chunk_fwd_o_wide reads each wide chunk out from its entry state, the
scores of its two halves and the block between them. On the interpreter against
``core_reference``: outputs and final states at T where the second half is missing, one row long
or partial (1, 32, 33, 67, 130), varlen (sequences of 0, 1, 5, 31, 40 and 64 steps), the read-out
before the update (rwkv6's), several K- and V-blocks, initial states, strong decays, fp16.
Buffers are NaN-poisoned; with gradients the training forward runs, checked as before.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402
from scandsl.lowering import chunk_vector  # noqa: E402
from scandsl.lowering import chunk_vector_launch as launch  # noqa: E402

from scandsl._core import Shape, core_reference  # noqa: E402
from scandsl.testing import TOLERANCES, assert_close, random_core_inputs  # noqa: E402
from tests.lowering.test_chunk_vector import COARSE, SIGS, _compare  # noqa: E402

KEYS = {"key": SIGS["key"], "key_before": SIGS["key_before"]}


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(chunk_vector, "POISON_OUTPUTS", True)


@pytest.fixture()
def wide_calls(monkeypatch):
    """How many times the wide read-out ran."""
    calls = []
    real = launch.fwd_o_wide
    monkeypatch.setattr(launch, "fwd_o_wide", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


def _wide(**over) -> dict:
    return {**COARSE, "fwd_mode": "pairs", "infer_wide": True, "fwd_BK": 16, "fwd_BV": 16, **over}


def _check(sig, x, cfg, dtype=torch.float32):
    tol = TOLERANCES[dtype][0]
    o, ht = chunk_vector.run(sig, x, cfg)
    ro, rht = core_reference(sig, x)
    assert_close(o.float(), ro.float(), tol, "o")
    if x.output_final_state:
        assert_close(ht, rht, tol, "final_state")


@pytest.mark.parametrize("T", [1, 32, 33, 67, 130])
@pytest.mark.parametrize("name", list(KEYS))
def test_wide_matches_reference(name, T, wide_calls):
    sig = KEYS[name]
    x = random_core_inputs(sig, B=2, T=T, H=2, K=24, V=40, seed=80 + T)
    _check(sig, x, _wide())
    assert wide_calls


@pytest.mark.parametrize("cumsum", ["kernel", "state", "fused"])
def test_wide_varlen_and_gate_sums(cumsum, wide_calls):
    """Sequences of 0, 1, 5, 31, 40, 64 steps (wide chunks ending in either half); every way of
    summing the gates (the wide read-out needs sums, so "fused" takes the walk's)."""
    sig = KEYS["key_before"]
    cu = torch.tensor([0, 0, 1, 6, 37, 77, 141], dtype=torch.int32)
    x = random_core_inputs(sig, T=141, H=1, K=24, V=40, cu_seqlens=cu, seed=90)
    _check(sig, x, _wide(fwd_cumsum=cumsum, state_BV=16))
    assert wide_calls


def test_wide_strong_decay_and_half(wide_calls):
    """Log-decays in [-8, -5] a step (a rebase the wrong way overflows), and fp16 operands."""
    sig = KEYS["key"]
    x = random_core_inputs(sig, B=1, T=100, H=1, K=24, V=40, seed=91)
    x.gk = -5.0 - 3.0 * torch.rand(x.gk.shape, generator=torch.Generator().manual_seed(92))
    _check(sig, x, _wide())
    x = random_core_inputs(sig, B=1, T=100, H=1, K=24, V=40, seed=93, dtype=torch.float16)
    _check(sig, x, _wide(), dtype=torch.float16)
    assert len(wide_calls) == 2


def test_gradients_take_the_training_forward(wide_calls):
    sig = KEYS["key"]
    x = random_core_inputs(sig, B=1, T=67, H=1, K=24, V=40, seed=94, requires_grad=True)
    _compare(sig, x, _wide())
    assert not wide_calls
    with torch.no_grad():
        _check(sig, x, _wide())
    assert wide_calls


def test_infer_wide_config():
    shape = Shape(4, 4096, 16, 128, 128)
    key = SIGS["key"]
    space = chunk_vector.search_space(key, shape)
    base = chunk_vector.default_config(key, shape)
    assert base["infer_wide"] is True
    assert space.valid({**base, "infer_wide": False}) is None
    assert "True or False" in space.valid({**base, "infer_wide": 64})
    assert chunk_vector.default_config(SIGS["value"], shape)["infer_wide"] is False


def test_no_effect_outside_pairs(wide_calls):
    """With fwd_mode="split" (or any decay but KEY) infer_wide changes nothing: the training forward runs."""
    sig = KEYS["key"]
    x = random_core_inputs(sig, B=1, T=40, H=1, K=16, V=16, seed=95)
    _check(sig, x, {"fwd_mode": "split", "infer_wide": True})
    outer = SIGS["outer"]
    _check(outer, random_core_inputs(outer, B=1, T=40, H=1, K=16, V=16, seed=96), {"infer_wide": True})
    assert not wide_calls
