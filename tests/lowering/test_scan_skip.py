"""The scan's skip term: the read-out adds ``D ⊙ v_t`` (``CoreInputs.D``), so mamba's and s4's
``o_t = S_t q_t + D ⊙ x_t`` runs without the separate epilogue kernel, forward or backward.

Core level: outputs and every gradient (D's too) against ``core_reference`` at awkward sizes
(T = 37 / 67 end inside a block, V = 40 is no power of two), with several K-blocks (the term
joins K-block 0's partial only), a gated value, varlen, the split forward, and NaN-poisoned
buffers (the fixture of ``test_scan``). Op level: mamba and s4 through ``strategy="scan"``
against ``strategy="reference"``, with no epilogue launched; the sequential strategy keeps it.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402
from scandsl.lowering import epilogue, epilogue_bwd, scan  # noqa: E402

from scandsl import ops  # noqa: E402
from scandsl._core import CoreInputs, Readout  # noqa: E402
from scandsl._expr import Input, Op, Read  # noqa: E402
from scandsl.testing import TAXONOMY_SIGS, TOLERANCES, assert_close, rel_err  # noqa: E402
from tests.lowering import test_scan  # noqa: E402
from tests.lowering.test_scan import EXTRA, SIGS, _cfg, _compare, _gated, _inputs, _split  # noqa: E402

# test_scan's fixtures: the interpreter's fast scan and poisoned buffers (autouse), the split spy
_interpreter = test_scan._interpreter
split_calls = test_scan.split_calls
AFTER = [name for name, sig in SIGS.items() if sig.readout is Readout.AFTER]


def _with_skip(x: CoreInputs, seed: int) -> CoreInputs:
    """``x`` with a skip term's ``D [H, V]`` (gradients as the value has them)."""
    gen = torch.Generator().manual_seed(seed)
    D = torch.randn(x.H, x.V, generator=gen, dtype=torch.float64).to(torch.float32)
    x.D = D.requires_grad_(x.v.requires_grad)
    return x


# ---------------------------------------------------------------- core level
@pytest.mark.parametrize("name", AFTER)
def test_skip_every_after_signature(name: str):
    sig = SIGS[name]
    x = _with_skip(_inputs(sig, B=2, T=37, H=2, seed=31), seed=1)
    _compare(sig, x, _cfg(x.K, BT=16, BV=16, bwd={"BT": 8}))
    assert "D" in [n for n, t in x.tensors().items() if t.requires_grad]


@pytest.mark.parametrize("name", ["channel", "channel_static", "outer"])
def test_skip_small_tiles(name: str):
    """Several K-blocks, whose partial outputs and dv are summed: the term joins K-block 0's."""
    sig = TAXONOMY_SIGS[name]
    x = _with_skip(_inputs(sig, B=1, T=37, H=2, seed=5), seed=2)
    cfg = _cfg(x.K, BT=16, BK=8, BV=16, bwd={"BT": 8, "BK": 8, "BV": 32})
    _compare(sig, x, cfg)


@pytest.mark.parametrize("T", [1, 67])
def test_skip_gated_value(T: int):
    """Mamba's form: the value is v ⊙ vg and the term reads v alone."""
    sig = TAXONOMY_SIGS["channel"]
    x = _with_skip(_gated(_inputs(sig, B=2, T=T, seed=23), seed=5), seed=3)
    _compare(sig, x, _cfg(x.K, BT=8, BV=16, bwd={"BT": 4, "BV": 16}))


@pytest.mark.parametrize("name", ["channel", "channel_static", "scalar"])
def test_skip_varlen_walk_and_split(name: str, split_calls):
    """Lengths 0, 1, 5, 31; dD sums the sequences' per-sequence partials."""
    sig = TAXONOMY_SIGS[name]
    cu = torch.tensor([0, 0, 1, 6, 37])
    x = _with_skip(_inputs(sig, T=37, H=2, cu_seqlens=cu, seed=3), seed=4)
    cfg = _cfg(x.K, BT=8, BV=16, bwd={"BT": 16})
    _compare(sig, x, cfg)
    _compare(sig, x, _split(cfg, 16))
    assert len(split_calls) == 1


def test_skip_split_gated_no_state(split_calls):
    """Pass 3 of the split forward shares the read-out slot; no state in or out."""
    sig = TAXONOMY_SIGS["channel"]
    x = _with_skip(_gated(_inputs(sig, B=2, T=67, H=1, seed=13, with_state=False), seed=7), seed=5)
    x.output_final_state = False
    _compare(sig, x, _split(_cfg(x.K, BT=8, BV=16, bwd={"BT": 4}), 16))
    assert split_calls


def test_skip_half_precision():
    """fp16 features with an fp32 D: the sum is fp32, stored once in fp16."""
    sig = TAXONOMY_SIGS["channel"]
    x = _with_skip(_inputs(sig, B=1, T=37, H=2, dtype=torch.float16, seed=11), seed=6)
    _compare(sig, x, _cfg(x.K, BV=16), dtype=torch.float16)


def test_skip_needs_the_after_readout():
    sig = EXTRA["channel_before"]
    assert not scan.takes_skip(sig) and scan.takes_skip(TAXONOMY_SIGS["channel"])
    x = _with_skip(_inputs(sig, B=1, T=5, H=1), seed=0)
    with pytest.raises(ValueError, match="readout=after"):
        scan.run(sig, x, _cfg(x.K))


def test_skip_source():
    """The term sits in the read-out slot of the walk and of the split's pass 3 (not pass 1),
    its gradients in the backward; a source without it has none of its lines."""
    sig = TAXONOMY_SIGS["channel"]
    src = scan.generate_source(sig, value_gated=True, skip=True)
    compile(src, "<skip>", "exec")
    read = "b_o += b_D[None, :] * b_v  # o_t = S_t q_t + D ⊙ v_t"
    for kernel, end in (
        ("scan_fwd_kernel", "scan_chunk_totals_kernel"),
        ("scan_chunk_totals_kernel", "scan_chunk_states_kernel"),
        ("scan_chunk_out_kernel", "scan_bwd_kernel"),
    ):
        body = src[src.index(f"def {kernel}(") : src.index(f"def {end}(")]
        assert (read in body) == (kernel != "scan_chunk_totals_kernel"), kernel
        assert ("# -- slot: read-out (after, skip term) --" in body) == (read in body), kernel
    bwd = src[src.index("def scan_bwd_kernel(") :]
    assert "b_dv * b_vg + b_D[None, :] * b_do" in bwd and "b_dD += tl.sum(b_do * b_v, axis=0)" in bwd
    assert "b_D" not in scan.generate_source(sig, value_gated=True)
    assert scan.kernels(sig, True, True).__name__ != scan.kernels(sig, True).__name__


def test_skip_term_forms():
    """``read + D ⊙ x`` in any order; a per-step factor, another operation or no product is not one."""
    read = Read("S", "new", Input("q", ("K",)), ("V",))
    D, v, u = Input("D", ("V",), False), Input("v", ("V",)), Input("u", ("V",))

    def op(fn, a, b):
        return Op(fn, (a, b), ("V",))

    assert epilogue.skip_term(op("add", read, op("mul", D, v)), read) == (D, v)
    assert epilogue.skip_term(op("add", op("mul", v, D), read), read) == (D, v)
    assert epilogue.skip_term(op("sub", read, op("mul", D, v)), read) is None
    assert epilogue.skip_term(op("add", read, op("mul", u, v)), read) is None
    assert epilogue.skip_term(op("add", read, v), read) is None
    for spec in (ops.mamba_spec, ops.s4_spec):
        assert epilogue.skip_term(spec.output, spec.normal_form.stages[0].reads()[0]) is not None


# ---------------------------------------------------------------- op level
@pytest.fixture
def epilogue_calls(monkeypatch):
    """Every launch of the separate epilogue, forward or backward; its buffers NaN-poisoned."""
    calls: list[str] = []
    run, apply = epilogue.run, epilogue_bwd.apply
    monkeypatch.setattr(epilogue, "run", lambda *a, **kw: calls.append("fwd") or run(*a, **kw))
    monkeypatch.setattr(epilogue_bwd, "apply", lambda *a, **kw: calls.append("bwd") or apply(*a, **kw))
    monkeypatch.setitem(epilogue.POISON, "enabled", True)
    return calls


def _op_inputs(name: str, B: int, T: int, H: int = 2, N: int = 5, V: int = 40, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    if name == "mamba":
        return dict(
            q=rnd(B, T, H, N), k=rnd(B, T, H, N, scale=0.5), v=rnd(B, T, H, V),
            dt=torch.rand(B, T, H, V, generator=g, dtype=torch.float64) + 0.1,
            A_log=rnd(H, V, N, scale=0.5), D=rnd(H, V),
        )  # fmt: skip
    return dict(
        v=rnd(B, T, H, V), dt=torch.rand(H, V, generator=g, dtype=torch.float64) + 0.1,
        A_log=rnd(H, V, N, scale=0.5), B=rnd(H, V, N, scale=0.5), C=rnd(H, V, N), D=rnd(H, V),
    )  # fmt: skip


def _op_compare(name: str, args: dict, strategy: str = "scan", **opts) -> None:
    """Output, final state and the gradient of every input (and initial state) against the
    float64 reference."""
    fn = getattr(ops, name)
    ours = {n: t.float().requires_grad_() for n, t in args.items() if t is not None}
    ref = {n: t.clone().requires_grad_() for n, t in args.items() if t is not None}
    h0 = opts.pop("initial_state", None)
    h0s = (None, None) if h0 is None else (h0.float().requires_grad_(), h0.clone().requires_grad_())
    o, s = fn(**ours, initial_state=h0s[0], output_final_state=True, strategy=strategy, **opts)
    ro, rs = fn(**ref, initial_state=h0s[1], output_final_state=True, strategy="reference", **opts)
    tol_out, tol_grad = TOLERANCES[torch.float32]
    assert o.dtype == torch.float32
    assert rel_err(o, ro) <= tol_out, f"o: {rel_err(o, ro):.2e}"
    assert rel_err(s, rs) <= tol_out, f"final state: {rel_err(s, rs):.2e}"
    w = torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ws = torch.randn(s.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ((o * w.float()).sum() + (s * ws.float()).sum()).backward()
    ((ro * w).sum() + (rs * ws).sum()).backward()
    pairs = [(n, ours[n], ref[n]) for n in ours] + ([("h0", *h0s)] if h0 is not None else [])
    for n, a, b in pairs:
        assert a.grad is not None, f"no gradient for {n}"
        assert_close(a.grad.double(), b.grad, tol_grad, f"d{n}")


@pytest.mark.parametrize("name", ["mamba", "s4"])
def test_op_fuses_skip(name: str, epilogue_calls):
    """B = 2, T = 37 (the default forward's 32-step blocks end inside one), N = 5, V = 40, an
    initial state: no epilogue runs, every gradient matches."""
    args = _op_inputs(name, B=2, T=37, seed=3)
    h0 = torch.randn(2, 2, 5, 40, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _op_compare(name, args, initial_state=h0)
    assert epilogue_calls == []


def test_op_mamba_without_d(epilogue_calls):
    args = {**_op_inputs("mamba", B=1, T=19, seed=5), "D": None}
    _op_compare("mamba", args)
    assert epilogue_calls == []


@pytest.mark.parametrize("name", ["mamba", "s4"])
def test_op_skip_varlen(name: str, epilogue_calls):
    """Lengths 0, 1, 6, 30 packed in one row, each from its own initial state."""
    cu = torch.tensor([0, 0, 1, 7, 37])
    args = _op_inputs(name, B=1, T=37, seed=6)
    h0 = torch.randn(4, 2, 5, 40, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    _op_compare(name, args, initial_state=h0, cu_seqlens=cu)
    assert epilogue_calls == []


@pytest.mark.parametrize("name", ["mamba", "s4"])
def test_op_skip_split_forward(name: str, epilogue_calls, split_calls, monkeypatch):
    """``fwd_mode="split"`` as the default config (strategy configs are not public): pass 3 adds
    the term; T = 67 is five chunks of 16 steps, the last 3 steps long."""
    default = scan.default_config
    split = {"fwd_mode": "split", "split_L": 16, "BT": 8}
    monkeypatch.setattr(scan, "default_config", lambda *a, **kw: {**default(*a, **kw), **split})
    scan._resolve.cache_clear()
    try:
        _op_compare(name, _op_inputs(name, B=1, T=67, seed=8))
    finally:
        scan._resolve.cache_clear()
    assert split_calls and epilogue_calls == []


def test_op_sequential_keeps_the_epilogue(epilogue_calls):
    """Only a strategy that ``takes_skip`` loses the epilogue."""
    _op_compare("mamba", _op_inputs("mamba", B=1, T=9, seed=9), strategy="sequential")
    assert epilogue_calls == ["bwd"]
