"""Sequential (fused-recurrent) kernels against ``core_reference``, on the Triton interpreter.

Every core signature of the taxonomy: outputs, final states and the gradient of every input
(initial state included), with NaN-poisoned output and gradient buffers so an element a kernel
fails to write shows up as an infinite error. V-blocks of 16 make V=40 span three programs
(so the per-V-block partial sums are exercised) and ``CK=8`` gives the per-channel backward
several checkpoints.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402
from scandsl.lowering import sequential, sequential_launch  # noqa: E402

from scandsl._core import CoreInputs, CoreSig, Decay, Shape, core_reference  # noqa: E402
from scandsl.testing import TAXONOMY_SIGS, TOLERANCES, assert_close, random_core_inputs  # noqa: E402

CFG = {"BV": 16, "BV_bwd": 16, "num_warps": 1, "num_warps_bwd": 1, "num_stages": 1, "CK": 8}
NAMES = ("q", "k", "v", "g", "gk", "gv", "A", "beta", "initial_state")
SIGS = list(TAXONOMY_SIGS)


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(sequential_launch, "POISON", True)


def _named(x: CoreInputs) -> list[tuple[str, torch.Tensor]]:
    return [(n, getattr(x, n)) for n in NAMES if getattr(x, n) is not None and getattr(x, n).requires_grad]


def _compare(sig: CoreSig, x: CoreInputs, cfg: dict = CFG, dtype: torch.dtype = torch.float32) -> None:
    """Outputs, final state and every gradient against the fp32 reference."""
    tol_out, tol_grad = TOLERANCES[dtype]
    o, ht = sequential.run(sig, x, cfg)
    ro, rht = core_reference(sig, x)
    assert o.dtype == (x.out_dtype or x.v.dtype)
    assert_close(o.float(), ro.float(), tol_out, "o")
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(ro.shape, generator=gen)
    loss_k, loss_r = (o.float() * w).sum(), (ro.float() * w).sum()
    if x.output_final_state:
        assert_close(ht, rht, tol_out, "final_state")
        dht = torch.randn(rht.shape, generator=gen)
        loss_k = loss_k + (ht * dht).sum()
        loss_r = loss_r + (rht * dht).sum()
    else:
        assert ht is None
    named = _named(x)
    got = torch.autograd.grad(loss_k, [t for _, t in named])
    ref = torch.autograd.grad(loss_r, [t for _, t in named])
    for (name, t), a, b in zip(named, got, ref):
        assert a.dtype == t.dtype, f"d{name} dtype"
        assert_close(a.float(), b.float(), tol_grad, f"d{name}")


@pytest.mark.parametrize("name", SIGS)
def test_matches_reference(name):
    sig = TAXONOMY_SIGS[name]
    _compare(sig, random_core_inputs(sig, B=2, T=37, H=1, K=24, V=40, requires_grad=True, seed=1))


@pytest.mark.parametrize("name", SIGS)
def test_single_step_pow2(name):
    sig = TAXONOMY_SIGS[name]
    _compare(sig, random_core_inputs(sig, B=2, T=1, H=2, K=16, V=16, requires_grad=True, seed=2))


@pytest.mark.parametrize("name", SIGS)
def test_varlen(name):
    sig = TAXONOMY_SIGS[name]
    cu = torch.tensor([0, 0, 1, 6, 23], dtype=torch.int32)  # lengths 0, 1, 5, 17
    x = random_core_inputs(sig, T=23, H=1, K=24, V=40, cu_seqlens=cu, requires_grad=True, seed=3)
    _compare(sig, x, {**CFG, "BV": 64, "BV_bwd": 64})


@pytest.mark.parametrize(("name", "prefetch"), [("key", 1), ("scalar_delta", 3), ("channel_static", 3)])
def test_prefetch_depths(name, prefetch):
    """Other pipelining depths, with sequences shorter than the depth (lengths 0, 1, 2)."""
    sig = TAXONOMY_SIGS[name]
    cu = torch.tensor([0, 1, 1, 3, 12], dtype=torch.int32)
    x = random_core_inputs(sig, T=12, H=1, K=16, V=16, cu_seqlens=cu, requires_grad=True, seed=10)
    _compare(sig, x, {**CFG, "prefetch": prefetch})


@pytest.mark.parametrize("name", ["scalar", "key_before", "channel"])
def test_no_state_no_final(name):
    sig = TAXONOMY_SIGS[name]
    x = random_core_inputs(sig, B=1, T=9, H=2, K=16, V=16, with_state=False, requires_grad=True, seed=4)
    x.output_final_state = False
    _compare(sig, x)


@pytest.mark.parametrize("name", ["key", "scalar_delta"])
def test_low_precision_inputs(name):
    sig = TAXONOMY_SIGS[name]
    for dtype in (torch.bfloat16, torch.float16):
        x = random_core_inputs(sig, B=1, T=11, H=1, K=16, V=16, dtype=dtype, requires_grad=True, seed=5)
        _compare(sig, x, dtype=dtype)
    x = random_core_inputs(sig, B=1, T=5, H=1, K=16, V=16, seed=6)
    x.out_dtype = torch.float16
    assert sequential.run(sig, x, CFG)[0].dtype == torch.float16


@pytest.mark.parametrize("name", ["key", "scalar_delta", "channel_static", "value"])
def test_decode_step_matches_full(name):
    sig = TAXONOMY_SIGS[name]
    x = random_core_inputs(sig, B=2, T=5, H=2, K=24, V=40, seed=8)
    o_full, ht_full = sequential.run(sig, x, CFG)
    state = x.initial_state.clone()
    for t in range(x.T):
        step = _slice_time(sig, x, t, t + 1)
        o, new = sequential.decode_step(sig, step, state, inplace=(t % 2 == 1), config=CFG)
        if t % 2 == 1:
            assert new.data_ptr() == state.data_ptr()
        state = new
        assert_close(o, o_full[:, t : t + 1], 2e-4, f"o[{t}]")
    assert_close(state, ht_full, 2e-4, "state")


@pytest.mark.parametrize("name", ["key_before", "scalar_delta", "channel", "outer"])
def test_state_handoff(name):
    """Running T steps at once equals running two pieces through initial_state, gradients included."""
    sig = TAXONOMY_SIGS[name]
    x = random_core_inputs(sig, B=2, T=21, H=1, K=24, V=40, requires_grad=True, seed=9)
    o_all, ht_all = sequential.run(sig, x, CFG)
    first = _slice_time(sig, x, 0, 12)
    o1, h1 = sequential.run(sig, first, CFG)
    second = _slice_time(sig, x, 12, 21)
    second.initial_state = h1
    o2, h2 = sequential.run(sig, second, CFG)
    assert_close(torch.cat([o1, o2], 1), o_all, 2e-4, "o")
    assert_close(h2, ht_all, 2e-4, "final_state")
    w = torch.randn_like(o_all)
    named = _named(x)
    g_all = torch.autograd.grad((o_all * w).sum() + ht_all.sum(), [t for _, t in named])
    g_two = torch.autograd.grad(
        (torch.cat([o1, o2], 1) * w).sum() + h2.sum(), [t for _, t in named], allow_unused=True
    )
    for (n, _), a, b in zip(named, g_all, g_two):
        assert_close(b, a, 2e-3, f"d{n}")


def _slice_time(sig: CoreSig, x: CoreInputs, a: int, b: int) -> CoreInputs:
    def cut(t, static=False):
        return t if t is None or static else t[:, a:b]

    return CoreInputs(
        q=cut(x.q, sig.query_static),
        k=cut(x.k, sig.key_static),
        v=cut(x.v),
        g=cut(x.g),
        gk=cut(x.gk),
        gv=cut(x.gv, sig.decay_static),
        A=x.A,
        beta=cut(x.beta),
        scale=x.scale,
        initial_state=x.initial_state,
        output_final_state=True,
    )


def test_api_surface():
    sig = CoreSig(decay=Decay.KEY)
    shape = Shape(4, 4096, 16, 128, 128)
    assert sequential.supports(sig) is None
    space = sequential.search_space(sig, shape)
    grid = space.grid()
    assert grid and all(space.valid(c) is None for c in grid)
    cfg = sequential.default_config(sig, shape)
    assert space.valid(cfg) is None
    src = sequential.generate_source(sig, cfg)
    assert list(src) == ["seq_fwd_key", "seq_bwd_key"]
    assert src != sequential.generate_source(sig, {**cfg, "prefetch": 1})
    for name, text in src.items():
        compile(text, name, "exec")
        assert f"def {name}(" in text
    with pytest.raises(ValueError, match="T = 3"):
        x = random_core_inputs(sig, B=1, T=3, H=1, K=16, V=16)
        sequential.decode_step(sig, x, torch.zeros(1, 1, 16, 16))
