"""Scan (Blelloch) strategy against ``core_reference``, on the Triton interpreter.

Every call runs with NaN-poisoned outputs, partials, checkpoints and gradient buffers, so an
element a kernel fails to write shows up as an infinite error. Time blocks of 8 and 16 steps
make T = 37 and 67 span several blocks (and end inside one).

The split forward (``fwd_mode="split"``) runs the same checks with chunks of 8-32 steps, so
T = 37 / 67 spans several chunks and ends inside one; its gradients go through the unchanged
backward, from the checkpoints the split forward saves.

The interpreter emulates ``tl.associative_scan`` with a non-sum combine one element at a time
in Python (minutes per call here); the fixture below swaps in a vectorised doubling
(Hillis-Steele) scan that calls the kernel's own ``combine`` on whole arrays. The kernel source
is unchanged, and ``test_doubling_scan_matches_interpreter`` checks the swap against the stock one.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from scandsl.lowering import load_strategy, scan, scan_slots  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

from scandsl._core import CoreInputs, CoreSig, Decay, Readout, Shape, Transition, core_reference  # noqa: E402
from scandsl.testing import TAXONOMY_SIGS, TOLERANCES, assert_close, random_core_inputs  # noqa: E402

SIGS = {name: sig for name, sig in TAXONOMY_SIGS.items() if sig.transition is Transition.IDENTITY}
EXTRA = {
    "none_before": CoreSig(readout=Readout.BEFORE),
    "channel_before": CoreSig(decay=Decay.CHANNEL, readout=Readout.BEFORE),
    "channel_static_before": CoreSig(
        decay=Decay.CHANNEL, readout=Readout.BEFORE, key_static=True, query_static=True, decay_static=True
    ),
}


_STOCK_SCAN = interpreter.ScanOps.generic_scan


def _doubling_scan(self, inputs):
    """Inclusive scan by doubling: log2(n) calls of the combine on whole (rolled) arrays."""
    axis, n = self.axis, inputs[0].handle.data.shape[self.axis]
    data = [np.array(x.handle.data) for x in inputs]
    shape = [1] * data[0].ndim
    shape[axis] = n
    step = 1
    while step < n:
        # block shapes must stay powers of two: combine with a rolled copy, keep rows >= step
        left = [self.to_tensor(np.roll(d, step, axis=axis), x.dtype) for d, x in zip(data, inputs)]
        right = [self.to_tensor(d, x.dtype) for d, x in zip(data, inputs)]
        with np.errstate(all="ignore"):
            out = self.combine_fn.fn(*left, *right)
        out = out if isinstance(out, tuple) else (out,)
        keep = (np.arange(n) >= step).reshape(shape)
        data = [np.where(keep, o.handle.data, d) for d, o in zip(data, out)]
        step *= 2
    return [self.to_tensor(d, x.dtype) for d, x in zip(data, inputs)]


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    monkeypatch.setattr(interpreter.ScanOps, "generic_scan", _doubling_scan)
    monkeypatch.setattr(scan, "POISON_OUTPUTS", True)
    # the register budget is a compiled-GPU limit; the interpreter takes any tile
    monkeypatch.setattr(scan, "_TILE_PER_THREAD", {"": 1 << 20, "bwd_": 1 << 20})


def _cfg(K: int, *, BT: int = 16, BK: int | None = None, BV: int = 64, bwd: dict | None = None) -> dict:
    fwd = {"BT": BT, "BK": BK or min(32, scan.pow2(K)), "BV": BV, "num_warps": 1, "num_stages": 1}
    return {**fwd, **{f"bwd_{k}": v for k, v in {**fwd, **(bwd or {})}.items()}}


def _split(cfg: dict, L: int) -> dict:
    return {**cfg, "fwd_mode": "split", "split_L": L}


@pytest.fixture
def split_calls(monkeypatch):
    """How many forwards went through the split passes (so a test cannot silently walk)."""
    calls = []
    real = scan._forward_split

    def spy(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(scan, "_forward_split", spy)
    return calls


def _grad_names(x: CoreInputs) -> list[str]:
    return [n for n, t in x.tensors().items() if t.requires_grad]


def _compare(sig: CoreSig, x: CoreInputs, cfg: dict, dtype: torch.dtype = torch.float32) -> None:
    """Outputs, final state and every gradient against the fp32 reference."""
    tol_out, tol_grad = TOLERANCES[dtype]
    o, ht = scan.run(sig, x, cfg)
    ro, rht = core_reference(sig, x)
    assert o.dtype == (x.out_dtype or x.v.dtype)
    assert_close(o.float(), ro.float(), tol_out, "o")
    w = torch.randn(ro.shape, generator=torch.Generator().manual_seed(1))
    loss_k, loss_r = (o.float() * w).sum(), (ro.float() * w).sum()
    if x.output_final_state:
        assert_close(ht, rht, tol_out, "final_state")
        dht = torch.randn(rht.shape, generator=torch.Generator().manual_seed(2))
        loss_k, loss_r = loss_k + (ht * dht).sum(), loss_r + (rht * dht).sum()
    else:
        assert ht is None
    names = _grad_names(x)
    if not names:
        return
    tensors = [getattr(x, n) for n in names]
    got = torch.autograd.grad(loss_k, tensors)
    ref = torch.autograd.grad(loss_r, tensors)
    for name, a, b in zip(names, got, ref):
        assert a.dtype == b.dtype, f"d{name} dtype"
        assert_close(a.float(), b.float(), tol_grad, f"d{name}")


def _inputs(sig: CoreSig, **kw) -> CoreInputs:
    kw.setdefault("K", 16 if sig.decay is Decay.CHANNEL else 24)
    return random_core_inputs(sig, V=40, requires_grad=True, **kw)


@triton.jit
def _compose(a1, u1, a2, u2):
    return a2 * a1, a2 * u1 + u2


@triton.jit
def _scan_probe(a_ptr, u_ptr, out_ptr, REVERSE: tl.constexpr):
    offs = (
        tl.arange(0, 8)[:, None, None] * 8
        + tl.arange(0, 2)[None, :, None] * 4
        + tl.arange(0, 4)[None, None, :]
    )
    _, x = tl.associative_scan((tl.load(a_ptr + offs), tl.load(u_ptr + offs)), 0, _compose, reverse=REVERSE)
    tl.store(out_ptr + offs, x)


def test_doubling_scan_matches_interpreter(monkeypatch):
    """The fixture's vectorised scan equals the interpreter's own element-by-element one."""
    gen = torch.Generator().manual_seed(0)
    a, u = torch.rand(8, 2, 4, generator=gen), torch.randn(8, 2, 4, generator=gen)
    for reverse in (False, True):
        fast, stock = torch.empty_like(u), torch.empty_like(u)
        _scan_probe[(1,)](a, u, fast, REVERSE=reverse)
        with monkeypatch.context() as mp:
            mp.setattr(interpreter.ScanOps, "generic_scan", _STOCK_SCAN)
            _scan_probe[(1,)](a, u, stock, REVERSE=reverse)
        torch.testing.assert_close(fast, stock, rtol=1e-6, atol=1e-6)


def test_supports():
    assert load_strategy("scan") is scan
    for name, sig in TAXONOMY_SIGS.items():
        reason = scan.supports(sig)
        if sig.transition is Transition.DELTA:
            assert reason and "delta" in reason, name
        else:
            assert reason is None, name
    with pytest.raises(ValueError, match="delta"):
        scan.run(TAXONOMY_SIGS["delta"], random_core_inputs(TAXONOMY_SIGS["delta"], T=4), None)


@pytest.mark.parametrize("T", [1, 37, 67])
@pytest.mark.parametrize("name", list(SIGS))
def test_taxonomy_sig(name: str, T: int):
    sig = SIGS[name]
    x = _inputs(sig, B=2 if T < 64 else 1, T=T, H=2, seed=T)
    _compare(sig, x, _cfg(x.K))


@pytest.mark.parametrize("name", list(EXTRA))
def test_before_readout_variants(name: str):
    sig = EXTRA[name]
    _compare(sig, _inputs(sig, B=1, T=37, H=2), _cfg(16 if sig.decay is Decay.CHANNEL else 24))


@pytest.mark.parametrize("name", ["channel", "outer", "key_before", "channel_static"])
def test_small_tiles(name: str):
    """Several K- and V-blocks (partial sums), forward blocks of 16 over backward blocks of 8."""
    sig = TAXONOMY_SIGS[name]
    x = _inputs(sig, B=1, T=37, H=2, seed=5)
    cfg = _cfg(x.K, BT=16, BK=8, BV=16, bwd={"BT": 8, "BK": 8, "BV": 32})
    _compare(sig, x, cfg)


@pytest.mark.parametrize("name", ["channel", "channel_static", "key_before", "scalar"])
@pytest.mark.parametrize("fwd_bt,bwd_bt", [(8, 16), (16, 4)])
def test_varlen(name: str, fwd_bt: int, bwd_bt: int):
    """Lengths 0, 1, 5, 31; checkpoints every few forward blocks, or several inside one."""
    sig = TAXONOMY_SIGS[name]
    cu = torch.tensor([0, 0, 1, 6, 37])  # lengths 0, 1, 5, 31
    x = _inputs(sig, T=37, H=2, cu_seqlens=cu, seed=3)
    _compare(sig, x, _cfg(x.K, BT=fwd_bt, bwd={"BT": bwd_bt}))


@pytest.mark.parametrize("name", ["channel", "key_before"])
def test_no_state_in_or_out(name: str):
    sig = TAXONOMY_SIGS[name]
    x = _inputs(sig, B=2, T=19, H=1, with_state=False)
    x.output_final_state = False
    _compare(sig, x, _cfg(x.K, BT=8))


@pytest.mark.parametrize("name", ["channel", "channel_static", "key_before", "outer"])
def test_state_hand_off(name: str):
    """Running T = 37 in two calls, the first's final state as the second's initial state."""
    sig = TAXONOMY_SIGS[name]
    x = _inputs(sig, B=2, T=37, H=2, seed=7)
    cfg = _cfg(x.K, BT=8)
    o_full, h_full = scan.run(sig, x, cfg)

    def part(lo: int, hi: int, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def cut(name: str) -> torch.Tensor | None:
            t = getattr(x, name)
            static = (name == "q" and sig.query_static) or (name == "k" and sig.key_static)
            static = static or (name == "gv" and sig.decay_static) or name == "A"
            return t if t is None or static else t[:, lo:hi]

        y = CoreInputs(**{f: getattr(x, f) for f in x.__dataclass_fields__})
        for name in ("q", "k", "v", "g", "gk", "gv", "A"):
            setattr(y, name, cut(name))
        y.initial_state = h0
        return scan.run(sig, y, cfg)

    o1, h1 = part(0, 20, x.initial_state)
    o2, h2 = part(20, 37, h1)
    assert_close(torch.cat([o1, o2], 1), o_full, 1e-5, "o (two calls)")
    assert_close(h2, h_full, 1e-5, "final state (two calls)")


@pytest.mark.parametrize("name", ["channel", "key"])
def test_bf16(name: str):
    """bf16 q, k, v (fp32 gates and state): bf16 outputs within the bf16 tolerances."""
    sig = TAXONOMY_SIGS[name]
    x = _inputs(sig, B=1, T=37, H=2, dtype=torch.bfloat16, seed=11)
    _compare(sig, x, _cfg(x.K), dtype=torch.bfloat16)


def test_default_config_and_search_space():
    for name, sig in SIGS.items():
        for shape in (Shape(4, 4096, 16, 16, 128), Shape(4, 4096, 16, 128, 128), Shape(1, 37, 2, 24, 40)):
            if sig.decay is not Decay.CHANNEL and shape.K == 16 and shape.V == 128:
                continue
            cfg = scan.default_config(sig, shape)
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(scan, "_TILE_PER_THREAD", {"": 128, "bwd_": 32})
                assert scan._check_config(cfg, shape) is None, (name, shape, cfg)
                space = scan.search_space(sig, shape)
                assert {p.name for p in space.params} >= set(cfg)
                assert space.valid(cfg) is None
                assert "fp32 values a thread" in space.valid({**cfg, "bwd_BT": 64})


def test_generated_source_is_readable():
    for name, sig in {**SIGS, **EXTRA}.items():
        src = scan.generate_source(sig, scan.default_config(sig, Shape(1, 64, 1, 16, 64)))
        compile(src, f"<{name}>", "exec")
        assert "# -- slot: decay" in src and "# -- slot: read-out" in src
        assert "tl.associative_scan" in src or sig.decay is Decay.NONE
        assert ("tl.exp2(b_gv[:, None, :] * b_A2" in src) == (
            sig.decay is Decay.CHANNEL and not sig.decay_static
        )
        for kernel in ("scan_fwd_kernel", "scan_chunk_totals_kernel", "scan_chunk_states_kernel",
                       "scan_chunk_out_kernel", "scan_bwd_kernel"):  # fmt: skip
            assert f"def {kernel}(" in src, (name, kernel)
        # pass 1 reads no query: its operands are the keys, values and gates
        totals = src[src.index("def scan_chunk_totals_kernel") : src.index("def scan_chunk_states_kernel")]
        assert "b_q" not in totals and "tl.store(o" not in totals
        # per-step per-channel gates: the forward converts k (and an AFTER q) after broadcasting
        # them (fewer shared-memory bytes, lowering/scan_slots.py::late_kq); the backward before
        fwd = src[src.index("def scan_fwd_kernel") : src.index("def scan_chunk_totals_kernel")]
        bwd = src[src.index("def scan_bwd_kernel") :]
        late = not sig.key_static and scan_slots.late_kq(sig)
        assert ("b_k[:, :, None].to(tl.float32)" in fwd) == late, name
        assert ("b_q[:, :, None].to(tl.float32)" in fwd) == (late and sig.readout is Readout.AFTER), name
        assert ".to(tl.float32)" not in bwd.split("b_u = ")[1].split("\n")[0], name


# ---------------------------------------------------------------- split forward
@pytest.mark.parametrize("name", list(SIGS) + list(EXTRA))
def test_split_every_signature(name: str, split_calls):
    """Chunks of 16 steps in blocks of 8: T = 67 is 5 chunks, the last 3 steps long."""
    sig = {**SIGS, **EXTRA}[name]
    x = _inputs(sig, B=1, T=67, H=1, seed=13)
    _compare(sig, x, _split(_cfg(x.K, BT=8), 16))
    assert split_calls


@pytest.mark.parametrize("name", ["channel", "channel_static", "key_before", "scalar", "none"])
def test_split_batch_and_checkpoints(name: str, split_calls):
    """B = 2, T = 37; chunks of one block (L = BT = 16) with checkpoints inside blocks, or
    chunks of 32 with a checkpoint every two blocks."""
    sig = TAXONOMY_SIGS[name]
    x = _inputs(sig, B=2, T=37, H=1, seed=17)
    _compare(sig, x, _split(_cfg(x.K, BT=16, bwd={"BT": 4}), 16))
    _compare(sig, x, _split(_cfg(x.K, BT=8, bwd={"BT": 16}), 32))
    assert len(split_calls) == 2


@pytest.mark.parametrize("name", ["channel", "outer", "key_before", "channel_static"])
def test_split_small_tiles(name: str, split_calls):
    """Several K- and V-blocks: every pass runs per tile, the partial outputs summed as in the walk."""
    sig = TAXONOMY_SIGS[name]
    x = _inputs(sig, B=1, T=37, H=1, seed=5)
    cfg = _cfg(x.K, BT=8, BK=8, BV=16, bwd={"BT": 8, "BK": 8, "BV": 32})
    _compare(sig, x, _split(cfg, 16))
    assert split_calls


@pytest.mark.parametrize("name", ["channel", "channel_static", "key_before", "scalar"])
@pytest.mark.parametrize("fwd_bt,L,bwd_bt", [(8, 8, 16), (4, 16, 4)])
def test_split_varlen(name: str, fwd_bt: int, L: int, bwd_bt: int, split_calls):
    """Lengths 0, 1, 5, 31: sequences without chunks, one-step chunks, chunks that end early."""
    sig = TAXONOMY_SIGS[name]
    cu = torch.tensor([0, 0, 1, 6, 37])
    x = _inputs(sig, T=37, H=2, cu_seqlens=cu, seed=3)
    _compare(sig, x, _split(_cfg(x.K, BT=fwd_bt, bwd={"BT": bwd_bt}), L))
    assert split_calls


@pytest.mark.parametrize("name", ["channel", "key_before"])
def test_split_no_state_in_or_out(name: str, split_calls):
    sig = TAXONOMY_SIGS[name]
    x = _inputs(sig, B=2, T=19, H=1, with_state=False)
    x.output_final_state = False
    _compare(sig, x, _split(_cfg(x.K, BT=4), 8))
    assert split_calls


def test_split_mamba_like(split_calls):
    """The Mamba-1 form (per-channel gate exp(dt ⊗ A), bf16 q/k/v/dt) at the core level, as
    ``scandsl.ops.mamba`` runs it (strategy configs are not public): split equals walk and
    the reference, without gradients as in inference."""
    sig = TAXONOMY_SIGS["channel"]
    x = _inputs(sig, B=2, T=67, H=1, dtype=torch.bfloat16, seed=19)
    cfg = _cfg(x.K, BT=8)
    with torch.no_grad():
        walk, h_walk = scan.run(sig, x, cfg)
        split, h_split = scan.run(sig, x, _split(cfg, 32))
        ref, h_ref = core_reference(sig, x)
    tol = TOLERANCES[torch.bfloat16][0]
    assert split.dtype == torch.bfloat16
    assert_close(split.float(), ref.float(), tol, "o")
    assert_close(h_split, h_ref, tol, "final_state")
    assert_close(split.float(), walk.float(), tol, "o (split vs walk)")
    assert_close(h_split, h_walk, 1e-5, "final_state (split vs walk)")
    assert len(split_calls) == 1


def test_split_config_validation():
    shape = Shape(4, 4096, 16, 16, 128)
    sig = TAXONOMY_SIGS["channel"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan, "_TILE_PER_THREAD", {"": 128, "bwd_": 32})
        base = scan.default_config(sig, shape)
        assert base["fwd_mode"] == "walk"
        space = scan.search_space(sig, shape)
        assert {"fwd_mode", "split_L"} <= {p.name for p in space.params}
        for L in (64, 256, 1024):
            assert space.valid(_split(base, L)) is None
        assert "expected one of" in space.valid({**base, "fwd_mode": "tree"})
        assert "power of two" in space.valid(_split(base, 96))
        assert "power of two >= BT" in space.valid(_split({**base, "BT": 16}, 8))
        assert "duplicates" in space.valid({**base, "split_L": 64})
    x = _inputs(sig, B=1, T=5, H=1)
    with pytest.raises(ValueError, match="split_L=12"):
        scan.run(sig, x, _split(_cfg(x.K, BT=4), 12))


def _gated(x: CoreInputs, seed: int) -> CoreInputs:
    """``x`` with its value split into two factors, v ⊙ vg (vg positive, like Mamba's dt)."""
    gen = torch.Generator().manual_seed(seed)
    vg = (torch.rand(x.v.shape, generator=gen, dtype=torch.float64) + 0.25).to(x.v.dtype)
    x.vg = vg.requires_grad_(x.v.requires_grad)
    return x


@pytest.mark.parametrize(
    "name,T",
    [
        ("channel", 37),
        ("channel", 1),
        ("channel_static", 37),
        ("key_before", 37),
        ("scalar", 37),
        ("none", 37),
    ],
)
def test_value_gate(name: str, T: int):
    """The value as two factors (``CoreInputs.vg``), multiplied in the kernels: outputs, state and
    gradients of v and vg against the reference, which multiplies them first (T=1: one step)."""
    sig = {**SIGS, **EXTRA}[name]
    x = _gated(_inputs(sig, T=T, seed=23), seed=5)
    _compare(sig, x, _cfg(x.K, BT=8, BV=16, bwd={"BT": 4, "BV": 16}))
    assert "vg" in _grad_names(x)


@pytest.mark.parametrize("name", ["channel", "key_before"])
def test_value_gate_split_and_varlen(name: str, split_calls):
    sig = {**SIGS, **EXTRA}[name]
    cu = torch.tensor([0, 9, 30, 41])
    x = _gated(_inputs(sig, T=41, cu_seqlens=cu, seed=29), seed=6)
    _compare(sig, x, _split(_cfg(x.K, BT=8, BV=16, bwd={"BT": 2, "BV": 16}), 16))
    assert split_calls


def test_mamba_op_gates_its_value_in_the_kernel(monkeypatch):
    """The op hands mamba's value ``dt ⊙ x`` to the scan as two factors (no product in PyTorch)
    and its constant ``-1`` goes into ``A``, not into a per-step ``-dt``; results as the reference."""
    from scandsl import ops

    seen = []
    real = scan.run

    def spy(sig, x, config=None):
        seen.append(x)
        return real(sig, x, config)

    monkeypatch.setattr(scan, "run", spy)
    g = torch.Generator().manual_seed(3)
    B, T, H, K, V = 1, 21, 2, 4, 8
    args = dict(
        q=torch.randn(B, T, H, K, generator=g),
        k=torch.randn(B, T, H, K, generator=g),
        v=torch.randn(B, T, H, V, generator=g),
        dt=torch.rand(B, T, H, V, generator=g) + 0.1,
        A_log=torch.randn(H, V, K, generator=g) * 0.5,
        D=torch.randn(H, V, generator=g),
    )
    leaves = {n: t.clone().requires_grad_() for n, t in args.items()}
    o, _ = ops.mamba(**leaves, strategy="scan")
    (x,) = seen

    def storage(t):
        return t.untyped_storage().data_ptr()

    assert x.vg is not None and {storage(x.v), storage(x.vg)} == {storage(leaves["v"]), storage(leaves["dt"])}
    assert storage(x.gv) == storage(leaves["dt"])  # the gate is dt itself: its -1 went into A
    ref_leaves = {n: t.clone().requires_grad_() for n, t in args.items()}
    ro, _ = ops.mamba(**ref_leaves, strategy="reference")
    assert_close(o, ro, 2e-4, "o")
    w = torch.randn(o.shape, generator=g)
    (o * w).sum().backward()
    (ro * w).sum().backward()
    for n in args:
        assert_close(leaves[n].grad, ref_leaves[n].grad, 2e-3, f"d{n}")
