"""fwd_mode="pairs" (KEY decay): chunk_fwd_a_pairs, the score matrix one (chunk, head) a program,
against ``core_reference`` on the interpreter, outputs and gradients (the backward's dv reads its A).

Output and scratch buffers are NaN-poisoned, so a cell of A the kernel fails to write shows up.
Both ways of forming the pair decays inside a sub-chunk (``fwd_diag``) are run on awkward T, K, V,
varlen with empty and single-step sequences, and strong decays.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402
from scandsl.lowering import chunk_vector  # noqa: E402
from scandsl.lowering import chunk_vector_launch as launch  # noqa: E402

from scandsl._core import CoreSig, Decay, Shape  # noqa: E402
from scandsl.testing import random_core_inputs  # noqa: E402
from tests.lowering.test_chunk_vector import COARSE, SIGS, _compare  # noqa: E402

KEYS = {"key": SIGS["key"], "key_before": SIGS["key_before"]}
DIAGS = ("fold", "cols")


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(chunk_vector, "POISON_OUTPUTS", True)


def _pairs(diag: str, **over) -> dict:
    return {**COARSE, "fwd_mode": "pairs", "fwd_diag": diag, **over}


@pytest.mark.parametrize("diag", DIAGS)
@pytest.mark.parametrize("name", list(KEYS))
def test_pairs_matches_reference(name, diag):
    """Several chunks and a partial last one (T=67), K=24 / V=40 (not powers of two; the off-diagonal
    products and the diagonal steps in 16-wide K-slices, the last partial), and a single step."""
    sig = KEYS[name]
    x = random_core_inputs(sig, B=2, T=67, H=2, K=24, V=40, seed=51, requires_grad=True)
    _compare(sig, x, _pairs(diag, fwd_BK=16, pairs_BK=16))
    _compare(
        sig, random_core_inputs(sig, B=1, T=1, H=1, K=16, V=16, seed=52, requires_grad=True), _pairs(diag)
    )


@pytest.mark.parametrize("sub", [16, 32])
@pytest.mark.parametrize("diag", DIAGS)
def test_pairs_chunk_of_several_sub_chunks(diag, sub):
    """Chunk 64 in four sub-chunks (several earlier row blocks, each on its own rebased reference)
    or two of 32 rows (a folded walk of 16 steps)."""
    sig = KEYS["key_before"]
    x = random_core_inputs(sig, B=1, T=150, H=2, K=32, V=32, seed=53, requires_grad=True)
    _compare(sig, x, _pairs(diag, chunk=64, sub=sub, fwd_warps=8, diag_BK=16, dqk_BK=16))  # the cubes fit


@pytest.mark.parametrize("diag", DIAGS)
@pytest.mark.parametrize("name", list(KEYS))
def test_pairs_varlen(name, diag):
    """Packed sequences of lengths 0, 1, 5, 31 (chunks that end inside a sub-chunk)."""
    sig = KEYS[name]
    cu = torch.tensor([0, 0, 1, 6, 37], dtype=torch.int32)
    x = random_core_inputs(sig, T=37, H=2, K=24, V=40, cu_seqlens=cu, seed=54, requires_grad=True)
    _compare(sig, x, _pairs(diag))


@pytest.mark.parametrize("diag", DIAGS)
@pytest.mark.parametrize("name", list(KEYS))
def test_pairs_strong_decay(name, diag):
    """Log-decays in [-8, -5] a step: exp(cumsum) would reach e^{+-160} inside a chunk, so any
    exponent rebased the wrong way overflows."""
    sig = KEYS[name]
    x = random_core_inputs(sig, B=1, T=67, H=2, K=24, V=40, seed=55)
    gen = torch.Generator().manual_seed(56)
    x.gk = -5.0 - 3.0 * torch.rand(x.gk.shape, generator=gen)
    for t in (x.q, x.k, x.v, x.gk, x.initial_state):
        t.requires_grad_(True)
    _compare(sig, x, _pairs(diag))


def test_pairs_half_inputs():
    """16-bit tensor-core operands (fp16: the interpreter's bf16 tl.dot is wrong, Triton 3.9)."""
    sig = KEYS["key"]
    x = random_core_inputs(sig, B=1, T=37, H=2, K=24, V=40, seed=57, dtype=torch.float16, requires_grad=True)
    _compare(sig, x, _pairs("fold"), dtype=torch.float16)


@pytest.mark.parametrize("diag", DIAGS)
def test_pairs_scores_equal_split_scores(diag):
    """The A that the backward reads: chunk_fwd_a_pairs writes what chunk_fwd_a writes, every cell."""
    sig = KEYS["key_before"]
    x = random_core_inputs(sig, B=1, T=45, H=2, K=40, V=16, seed=58)
    for t in (x.q, x.k):
        t.requires_grad_(False)
    cfg = chunk_vector.resolve_config(sig, x, {**COARSE, "fwd_mode": "split"})
    P = launch.Plan(sig, x, cfg)
    gk_cum = launch.cumsum(P, x.gk.contiguous())
    hs, _ = launch.fwd_state(P, x.k, x.v, gk_cum, None, None, False)
    o_split, a_split = launch.fwd_o_split(P, x.q, x.k, x.v, gk_cum, hs, x.v.dtype)
    o_pairs, a_pairs = launch.fwd_o_split(P.with_config(fwd_mode="pairs", fwd_diag=diag), x.q, x.k, x.v,
                                          gk_cum, hs, x.v.dtype)  # fmt: skip
    rows = torch.arange(32)[:, None] < torch.tensor([32, 13])[:, None, None]  # [chunks, C, 1]: valid rows
    valid = rows.expand(2, 32, 32)[:, None].expand_as(a_split)
    torch.testing.assert_close(a_pairs[valid], a_split[valid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o_pairs, o_split, rtol=1e-5, atol=1e-5)


def test_pairs_config():
    shape = Shape(4, 4096, 16, 128, 128)
    key = SIGS["key"]
    space = chunk_vector.search_space(key, shape)
    assert space.valid({**chunk_vector.default_config(key, shape), "fwd_mode": "pairs"}) is None
    assert (
        space.valid({**chunk_vector.default_config(key, shape), "fwd_mode": "pairs", "fwd_diag": "cols"})
        is None
    )
    for sig in (SIGS["value"], SIGS["outer"]):
        reason = chunk_vector.search_space(sig, shape).valid({**chunk_vector.default_config(sig, shape),
                                                              "fwd_mode": "pairs"})  # fmt: skip
        assert "KEY decay only" in reason
    bad = {**chunk_vector.default_config(key, shape), "fwd_mode": "pairs", "fwd_diag": "steps"}
    assert "fwd_diag" in space.valid(bad)
    assert "def chunk_fwd_a_pairs(" in chunk_vector.generate_source(key)
    assert "def chunk_fwd_a_pairs(" not in chunk_vector.generate_source(CoreSig(decay=Decay.VALUE))
