"""Chunked vector-decay kernels (decay KEY / VALUE / OUTER) against ``core_reference``, on the interpreter.

Every call runs with NaN-poisoned output, state and gradient buffers, so an element a kernel
fails to write shows up as an infinite error. Chunk 32 with sub-chunks of 16 keeps several
chunks, a partial last chunk and both inter- and intra-sub-chunk paths at T <= 67; the ``fine``
config also splits K and V into several (partial) blocks.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scandsl.lowering import chunk as chunk_dispatch  # noqa: E402
from scandsl.lowering import chunk_vector  # noqa: E402

from scandsl._core import CoreInputs, CoreSig, Decay, Readout, Shape, core_reference  # noqa: E402
from scandsl.testing import TOLERANCES, assert_close, random_core_inputs  # noqa: E402

SIGS = {
    "key": CoreSig(decay=Decay.KEY),
    "key_before": CoreSig(decay=Decay.KEY, readout=Readout.BEFORE),
    "value": CoreSig(decay=Decay.VALUE),
    "outer": CoreSig(decay=Decay.OUTER),
}
COARSE = {"chunk": 32, "sub": 16, "fwd_BK": 32, "fwd_BV": 64, "state_BK": 32, "state_BV": 64, "dv_BK": 32,
          "dv_BV": 64, "dqk_BK": 32, "dqk_BV": 64, "diag_BK": 32, "diag_BV": 64}  # fmt: skip
FINE = {
    "chunk": 32,
    "sub": 16,
    "fwd_BK": 16,
    "fwd_BV": 32,
    "state_BK": 16,
    "state_BV": 32,
    "dv_BK": 16,
    "dv_BV": 32,
    "dqk_BK": 16,
    "dqk_BV": 32,
    "diag_BK": 16,
    "diag_BV": 16,
    "dqk_mode": "fused",
    "fwd_mode": "fused",
}  # fmt: skip  (COARSE keeps each decay's default dq/dk and forward modes; FINE the fused ones)
GRAD_NAMES = ("q", "k", "v", "gk", "gv", "initial_state")


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(chunk_vector, "POISON_OUTPUTS", True)


def _compare(sig: CoreSig, x: CoreInputs, cfg: dict, dtype: torch.dtype = torch.float32) -> None:
    """Outputs, final state and every gradient (through o and the final state) against the reference."""
    tol_out, tol_grad = TOLERANCES[dtype]
    o, ht = chunk_vector.run(sig, x, cfg)
    ro, rht = core_reference(sig, x)
    assert o.dtype == (x.out_dtype or x.v.dtype)
    assert_close(o.float(), ro.float(), tol_out, "o")
    weight = torch.randn(ro.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    loss_k = (o.float() * weight).sum()
    loss_r = (ro.float() * weight).sum()
    if x.output_final_state:
        assert_close(ht, rht, tol_out, "final_state")
        dht = torch.randn(rht.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float32)
        loss_k = loss_k + (ht * dht).sum()
        loss_r = loss_r + (rht * dht).sum()
    else:
        assert ht is None
    named = [
        (n, getattr(x, n)) for n in GRAD_NAMES if getattr(x, n) is not None and getattr(x, n).requires_grad
    ]
    got = torch.autograd.grad(loss_k, [t for _, t in named])
    ref = torch.autograd.grad(loss_r, [t for _, t in named])
    for (name, _), a, b in zip(named, got, ref):
        assert_close(a.float(), b.float(), tol_grad, f"d{name}")


@pytest.mark.parametrize(
    ("T", "K", "V"), [(1, 24, 40), (37, 16, 16), (67, 24, 40)], ids=["T1-K24V40", "T37-K16V16", "T67-K24V40"]
)
@pytest.mark.parametrize("name", list(SIGS))
def test_matches_reference(name, T, K, V):
    sig = SIGS[name]
    x = random_core_inputs(sig, B=2, T=T, H=2, K=K, V=V, seed=T + K, requires_grad=True)
    _compare(sig, x, COARSE)


def test_several_partial_feature_blocks():
    """K=24 and V=40 cut into 16- and 32-wide blocks, the last one partial, on both decay axes."""
    sig = SIGS["outer"]
    _compare(sig, random_core_inputs(sig, B=1, T=67, H=1, K=24, V=40, seed=2, requires_grad=True), FINE)


@pytest.mark.parametrize("name", ["key", "key_before"])
def test_other_shapes(name):
    """T=37 at K=24, V=40 and T=67 at K=V=16 (the rest of the T x (K, V) grid for the target rows)."""
    sig = SIGS[name]
    _compare(sig, random_core_inputs(sig, B=2, T=37, H=1, K=24, V=40, seed=5, requires_grad=True), COARSE)
    _compare(sig, random_core_inputs(sig, B=1, T=67, H=2, K=16, V=16, seed=6, requires_grad=True), COARSE)


@pytest.mark.parametrize("name", ["value_before", "outer_before"])
def test_value_decay_before(name):
    sig = CoreSig(decay=Decay.VALUE if name == "value_before" else Decay.OUTER, readout=Readout.BEFORE)
    _compare(sig, random_core_inputs(sig, B=1, T=37, H=2, K=24, V=40, seed=9, requires_grad=True), COARSE)


@pytest.mark.parametrize("name", list(SIGS))
def test_varlen_with_empty_and_single_sequences(name):
    sig = SIGS[name]
    cu = torch.tensor([0, 0, 1, 6, 37], dtype=torch.int32)  # lengths 0, 1, 5, 31
    x = random_core_inputs(sig, T=37, H=2, K=24, V=40, cu_seqlens=cu, seed=3, requires_grad=True)
    _compare(sig, x, COARSE)


def test_without_states():
    sig = SIGS["outer"]
    x = random_core_inputs(sig, B=2, T=37, H=1, K=24, V=40, seed=4, with_state=False, requires_grad=True)
    x.output_final_state = False
    _compare(sig, x, COARSE)


def test_state_hand_off():
    """Two calls chained through final_state -> initial_state equal one call over the whole sequence."""
    sig = SIGS["key_before"]
    x = random_core_inputs(sig, B=2, T=67, H=2, K=24, V=40, seed=11)
    o, ht = chunk_vector.run(sig, x, COARSE)
    cut = 29
    parts, state = [], x.initial_state
    for lo, hi in ((0, cut), (cut, x.T)):
        xi = CoreInputs(q=x.q[:, lo:hi], k=x.k[:, lo:hi], v=x.v[:, lo:hi], gk=x.gk[:, lo:hi], scale=x.scale,
                        initial_state=state, output_final_state=True)  # fmt: skip
        oi, state = chunk_vector.run(sig, xi, COARSE)
        parts.append(oi)
    assert_close(torch.cat(parts, 1), o, 1e-5, "o (chained)")
    assert_close(state, ht, 1e-5, "final_state (chained)")


def test_strong_decay_is_stable():
    """Log-decays around -5 a step: unrebased exp(cumsum) would reach e^{±160} inside a chunk."""
    sig = SIGS["outer"]
    x = random_core_inputs(sig, B=1, T=67, H=2, K=24, V=40, seed=12)
    gen = torch.Generator().manual_seed(13)
    x.gk = -5.0 - 3.0 * torch.rand(x.gk.shape, generator=gen)  # [-8, -5]
    x.gv = F.logsigmoid(torch.randn(x.gv.shape, generator=gen) - 4.0)  # ~ -4
    for t in (x.q, x.k, x.v, x.gk, x.gv, x.initial_state):
        t.requires_grad_(True)
    _compare(sig, x, COARSE)


def test_half_inputs():
    """16-bit tensor-core operands. fp16 here: the interpreter's tl.dot mishandles bf16 (Triton 3.9),
    so bf16 is checked on the GPU by bench/gpu_check_chunk_vector.py."""
    sig = SIGS["key_before"]
    x = random_core_inputs(sig, B=1, T=37, H=2, K=24, V=40, seed=14, dtype=torch.float16, requires_grad=True)
    _compare(sig, x, COARSE, dtype=torch.float16)


def test_generated_source_has_named_slots():
    after = chunk_vector.generate_source(SIGS["key"])
    before = chunk_vector.generate_source(SIGS["key_before"])
    value = chunk_vector.generate_source(SIGS["value"])
    assert "QSHIFT = tl.constexpr(0)" in after and "QSHIFT = tl.constexpr(1)" in before
    assert "diag_scores(" in after and "gv_cum, bos" not in after  # key decay only
    assert "diag_apply(a_dg, b_vi" in value and "gk_cum, bos" not in value  # value decay only
    for src in (after, before, value):
        compile(src, "<generated>", "exec")
        assert "@" + "key_scores@" not in src  # every slot filled


def test_supports_and_config():
    assert chunk_dispatch.supports(SIGS["outer"]) is None
    assert chunk_vector.supports(CoreSig(decay=Decay.SCALAR)) is not None
    shape = Shape(4, 4096, 16, 128, 128)
    for sig in SIGS.values():
        space = chunk_vector.search_space(sig, shape)
        assert space.valid(chunk_vector.default_config(sig, shape)) is None
    bad = {**chunk_vector.default_config(SIGS["key"], shape), "sub": 48}
    assert "sub" in space.valid(bad)


# ---- dqk_mode="shared_scores": chunk_bwd_da writes the V-wide scores once, chunk_bwd_dqk_shared reads them

SHARED = {"dqk_mode": "shared_scores", "da_BV": 32}


@pytest.mark.parametrize("name", list(SIGS))
def test_shared_scores_matches_reference(name):
    """Several chunks, a partial last chunk, partial K / V blocks (FINE), poisoned scratch."""
    sig = SIGS[name]
    _compare(sig, random_core_inputs(sig, B=2, T=67, H=2, K=24, V=40, seed=21, requires_grad=True),
             {**FINE, **SHARED})  # fmt: skip
    _compare(sig, random_core_inputs(sig, B=1, T=1, H=1, K=16, V=16, seed=22, requires_grad=True),
             {**COARSE, **SHARED})  # fmt: skip


@pytest.mark.parametrize("name", ["value_before", "outer_before"])
def test_shared_scores_value_decay_before(name):
    sig = CoreSig(decay=Decay.VALUE if name == "value_before" else Decay.OUTER, readout=Readout.BEFORE)
    _compare(sig, random_core_inputs(sig, B=1, T=37, H=2, K=24, V=40, seed=23, requires_grad=True),
             {**COARSE, **SHARED, "da_BV": 64})  # fmt: skip


def test_shared_scores_config():
    shape = Shape(4, 4096, 16, 128, 128)
    for sig in SIGS.values():
        space = chunk_vector.search_space(sig, shape)
        assert "dqk_mode" in [p.name for p in space.params]
        assert space.valid({**chunk_vector.default_config(sig, shape), **SHARED}) is None
        # GPU-timed default: split dq/dk for KEY decay (the tuned tiles), fused where only that was timed
        want = "split" if sig.decay == Decay.KEY else "fused"
        assert chunk_vector.default_config(sig, shape)["dqk_mode"] == want
    assert "dqk_mode" in space.valid({**chunk_vector.default_config(sig, shape), "dqk_mode": "other"})
    src = chunk_vector.generate_source(SIGS["outer"])
    assert "def chunk_bwd_da(" in src and "def chunk_bwd_dqk_shared(" in src and "@value_state@" not in src


# ---- dqk_mode="split" (KEY decay): intra-chunk terms per sub-chunk, then state terms + gate gradient per chunk

SPLIT = {"dqk_mode": "split", "da_BV": 32}


@pytest.mark.parametrize("name", ["key", "key_before"])
def test_split_matches_reference(name):
    """Several chunks, a partial last chunk and partial K / V blocks (FINE), a single step
    (COARSE), and the default chunk of 64 in four sub-chunks; poisoned scratch throughout."""
    sig = SIGS[name]
    _compare(sig, random_core_inputs(sig, B=2, T=67, H=2, K=24, V=40, seed=31, requires_grad=True),
             {**FINE, **SPLIT})  # fmt: skip
    _compare(sig, random_core_inputs(sig, B=1, T=1, H=1, K=16, V=16, seed=32, requires_grad=True),
             {**COARSE, **SPLIT})  # fmt: skip
    cfg = {**chunk_vector.default_config(sig, Shape(1, 150, 2, 32, 32)), "dqk_mode": "split", "dqk_warps": 8}
    _compare(sig, random_core_inputs(sig, B=1, T=150, H=2, K=32, V=32, seed=33, requires_grad=True), cfg)


@pytest.mark.parametrize(
    "name, mode, seed",
    [
        ("key_before", "shared", 24),
        ("outer", "shared", 24),
        ("key", "split", 34),
        ("key_before", "split", 34),
    ],
)
def test_dqk_modes_varlen(name, mode, seed):
    """The shared-scores and split dq/dk modes on packed sequences of lengths 0, 1, 5, 31."""
    sig = SIGS[name]
    cu = torch.tensor([0, 0, 1, 6, 37], dtype=torch.int32)
    x = random_core_inputs(sig, T=37, H=2, K=24, V=40, cu_seqlens=cu, seed=seed, requires_grad=True)
    _compare(sig, x, {**COARSE, **(SHARED if mode == "shared" else SPLIT)})


def test_split_diag_cube_matches_reference():
    """dqk_diag="cube" and da_scores="blocks" (the KEY defaults are "cols" and "full", which the
    split and shared tests above run): the sub-chunk's own pairs as [SC, SC, BK] fp32 cubes in
    chunk_bwd_dqk_intra, the scores per sub-chunk in chunk_bwd_da; the read-out before the update
    with partial K blocks and a partial last chunk, then the one after it on packed sequences of
    lengths 0, 1, 5, 31; poisoned scratch throughout."""
    cube = {**SPLIT, "dqk_diag": "cube", "da_scores": "blocks"}
    sig = SIGS["key_before"]
    _compare(sig, random_core_inputs(sig, B=2, T=67, H=2, K=24, V=40, seed=35, requires_grad=True),
             {**FINE, **cube})  # fmt: skip
    sig = SIGS["key"]
    cu = torch.tensor([0, 0, 1, 6, 37], dtype=torch.int32)
    x = random_core_inputs(sig, T=37, H=2, K=24, V=40, cu_seqlens=cu, seed=36, requires_grad=True)
    _compare(sig, x, {**COARSE, **cube})
    shape = Shape(4, 4096, 16, 128, 128)
    space = chunk_vector.search_space(sig, shape)
    assert space.valid({**chunk_vector.default_config(sig, shape), "dqk_diag": "cube"}) is None
    assert "dqk_diag" in space.valid({**chunk_vector.default_config(sig, shape), "dqk_diag": "rows"})
    assert "KEY decay only" in chunk_vector.search_space(SIGS["outer"], shape).valid(
        {**chunk_vector.default_config(SIGS["outer"], shape), "da_scores": "full"}
    )
    # only the cube counts against the register budget of [SC, SC, BK] products
    wide = {**chunk_vector.default_config(sig, shape), "dqk_BK": 128}
    assert space.valid(wide) is None and "dqk apply" in space.valid({**wide, "dqk_diag": "cube"})


def test_split_is_for_key_decay_only():
    shape = Shape(4, 4096, 16, 128, 128)
    key = SIGS["key"]
    assert (
        chunk_vector.search_space(key, shape).valid({**chunk_vector.default_config(key, shape), **SPLIT})
        is None
    )
    for name in ("value", "outer"):
        sig = SIGS[name]
        reason = chunk_vector.search_space(sig, shape).valid(
            {**chunk_vector.default_config(sig, shape), **SPLIT}
        )
        assert "KEY decay only" in reason
        assert "def chunk_bwd_dqk_intra(" not in chunk_vector.generate_source(sig)
    assert "def chunk_bwd_dqk_intra(" in chunk_vector.generate_source(key)


@pytest.mark.parametrize("name", ["key", "key_before"])
def test_split_forward_matches_reference(name):
    """fwd_mode="split" (chunk_fwd_a + chunk_fwd_o_split), alone and with the split dq / dk."""
    sig = SIGS[name]
    fwd = {"fwd_mode": "split"}
    _compare(sig, random_core_inputs(sig, B=2, T=67, H=2, K=24, V=40, seed=41, requires_grad=True),
             {**FINE, **fwd})  # fmt: skip
    _compare(sig, random_core_inputs(sig, B=1, T=1, H=1, K=16, V=16, seed=42, requires_grad=True),
             {**COARSE, **fwd, **SPLIT})  # fmt: skip
    cu = torch.tensor([0, 0, 1, 6, 37], dtype=torch.int32)
    x = random_core_inputs(sig, T=37, H=2, K=24, V=40, cu_seqlens=cu, seed=43, requires_grad=True)
    _compare(sig, x, {**COARSE, **fwd, **SPLIT})
    cfg = {**chunk_vector.default_config(sig, Shape(1, 150, 2, 32, 32)), **fwd, "fwd_warps": 8}
    _compare(sig, random_core_inputs(sig, B=1, T=150, H=2, K=32, V=32, seed=44, requires_grad=True), cfg)


def test_split_forward_is_for_key_decay_only():
    shape = Shape(4, 4096, 16, 128, 128)
    for name in ("value", "outer"):
        sig = SIGS[name]
        cfg = {**chunk_vector.default_config(sig, shape), "fwd_mode": "split"}
        assert "KEY decay only" in chunk_vector.search_space(sig, shape).valid(cfg)
    key = SIGS["key"]
    assert chunk_vector.default_config(key, shape)["fwd_mode"] == "pairs"  # timed fastest on the H100
    assert chunk_vector.default_config(SIGS["value"], shape)["fwd_mode"] == "fused"
    assert (
        chunk_vector.search_space(key, shape).valid(
            {**chunk_vector.default_config(key, shape), "fwd_mode": "split"}
        )
        is None
    )
