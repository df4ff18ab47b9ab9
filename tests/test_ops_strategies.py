"""Every taxonomy row × every kernel strategy that is legal and built: outputs, final states
and all gradients against the reference interpreter (fp32 kernels vs a float64 oracle), plus
varlen batches and state hand-off (issue 9). Kernels run on the Triton interpreter on CPU."""

from __future__ import annotations

import pytest
import torch
from test_reference_taxonomy import case

from scandsl import ops
from scandsl._validate import _built_for
from scandsl.testing import TOLERANCES, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OUT_TOL, GRAD_TOL = TOLERANCES[torch.float32]
HALF = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # see test_half_features_with_fp32_gates


def _rows_and_strategies():
    for name, (_, specs) in ops.TAXONOMY.items():
        spec = specs[-1]
        for strategy in ("sequential", "scan", "chunk"):
            if strategy in spec.legal_strategies:
                yield pytest.param(name, strategy, id=f"{name}-{strategy}")


def _built(name, strategy):
    spec = ops.TAXONOMY[name][1][-1]
    if not _built_for(spec, strategy):
        pytest.skip(f"{strategy} kernels for {name} are not built in this checkout")


def _f32(t):
    return t.detach().to(DEVICE, torch.float32).requires_grad_(t.requires_grad)


def _as_tuple(s):
    return s if isinstance(s, tuple) else (s,)


def _run(fn, kw, init, sc, strategy, cu_seqlens=None):
    init_arg = init[0] if len(init) == 1 else tuple(init)
    return fn(
        **kw,
        scale=sc,
        initial_state=init_arg,
        output_final_state=True,
        strategy=strategy,
        cu_seqlens=cu_seqlens,
    )


@pytest.mark.parametrize("name, strategy", list(_rows_and_strategies()))
@pytest.mark.parametrize("T", [1, 19])
def test_strategy_matches_reference(name, strategy, T):
    _built(name, strategy)
    gen = torch.Generator().manual_seed(11 + T)
    kw64, init64, _, sc = case(name, gen, B=2, T=T)
    fn = ops.TAXONOMY[name][0]
    kw = {k: (_f32(v) if isinstance(v, torch.Tensor) else v) for k, v in kw64.items()}
    init = [_f32(s) for s in init64]
    given = [x.detach().clone() for x in init]
    o, s = _run(fn, kw, init, sc, strategy)
    # the kernels may read the caller's state tensor itself (no copy), never write it
    assert all(torch.equal(x, y) for x, y in zip(init, given)), "the initial state was modified"
    o_ref, s_ref = _run(fn, kw64, init64, sc, "reference")
    assert o.dtype == torch.float32 and torch.isfinite(o).all()
    assert rel_err(o, o_ref) <= OUT_TOL, f"output rel err {rel_err(o, o_ref):.2e}"
    for a, b in zip(_as_tuple(s), _as_tuple(s_ref)):
        assert a.shape == b.shape and rel_err(a, b) <= OUT_TOL, f"state rel err {rel_err(a, b):.2e}"
    w = torch.randn(o.shape, generator=gen, dtype=torch.float64)
    ws = [torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in _as_tuple(s_ref)]

    def loss(out, states):
        return (out * w.to(out)).sum() + sum((x * wi.to(x)).sum() for x, wi in zip(_as_tuple(states), ws))

    leaves = [t for t in list(kw.values()) + init if isinstance(t, torch.Tensor) and t.requires_grad]
    leaves64 = [
        t for t in list(kw64.values()) + list(init64) if isinstance(t, torch.Tensor) and t.requires_grad
    ]
    ga = torch.autograd.grad(loss(o, s), leaves, allow_unused=True)
    gb = torch.autograd.grad(loss(o_ref, s_ref), leaves64, allow_unused=True)
    for i, (a, b) in enumerate(zip(ga, gb)):
        if b is None or b.abs().max() == 0:
            continue
        assert a is not None, f"no gradient for input #{i}"
        assert rel_err(a, b) <= GRAD_TOL, f"grad #{i} {tuple(b.shape)} rel err {rel_err(a, b):.2e}"


@pytest.mark.parametrize("name, strategy", list(_rows_and_strategies()))
def test_varlen_and_hand_off(name, strategy):
    """Packed sequences equal separate runs; running in two pieces equals running at once."""
    _built(name, strategy)
    gen = torch.Generator().manual_seed(5)
    lens = [0, 1, 6, 9]
    kw64, init64, _, sc = case(name, gen, B=1, T=sum(lens))
    fn = ops.TAXONOMY[name][0]
    kw = {k: (_f32(v) if isinstance(v, torch.Tensor) else v) for k, v in kw64.items()}
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), device=DEVICE)
    n = len(lens)
    per_seq_init = [_f32(s).detach().expand(n, *s.shape[1:]).contiguous() for s in init64]
    o, s = _run(fn, kw, per_seq_init, sc, strategy, cu_seqlens=cu)
    kw_ref = {k: (v.detach().double().cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    o_ref, s_ref = _run(fn, kw_ref, [t.double().cpu() for t in per_seq_init], sc, "reference", cu.cpu())
    assert rel_err(o, o_ref) <= OUT_TOL
    for a, b in zip(_as_tuple(s), _as_tuple(s_ref)):
        assert rel_err(a, b) <= OUT_TOL

    # hand-off: first 7 steps, then the rest from the returned state == all 16 at once (B = 1)
    split = 7
    time_args = {k for k, d in ops.TAXONOMY[name][1][-1].inputs if d.time}

    def piece(lo, hi):
        return {
            k: (v[:, lo:hi] if k in time_args and isinstance(v, torch.Tensor) else v) for k, v in kw.items()
        }

    init1 = [_f32(x)[:1].detach().requires_grad_(True) for x in init64]
    o_all, s_all = _run(fn, kw, init1, sc, strategy)
    o1, s1 = _run(fn, piece(0, split), init1, sc, strategy)
    o2, s2 = _run(fn, piece(split, None), list(_as_tuple(s1)), sc, strategy)
    assert rel_err(torch.cat([o1, o2], 1), o_all) <= OUT_TOL
    for a, b in zip(_as_tuple(s2), _as_tuple(s_all)):
        assert rel_err(a, b) <= OUT_TOL
    # ... and the gradients: through the handed-on state back into the first piece's inputs and
    # its initial state, equal to those of the single call
    leaves = [t for t in list(kw.values()) + init1 if isinstance(t, torch.Tensor) and t.requires_grad]
    w = torch.randn(o_all.shape, generator=torch.Generator().manual_seed(9)).to(o_all.device)
    g_all = torch.autograd.grad((o_all * w).sum(), leaves, allow_unused=True)
    g_pieces = torch.autograd.grad((torch.cat([o1, o2], 1) * w).sum(), leaves, allow_unused=True)
    for i, (a, b) in enumerate(zip(g_pieces, g_all)):
        assert (a is None) == (b is None), f"grad #{i}: present in one run only"
        if b is not None:
            assert rel_err(a, b) <= GRAD_TOL, (
                f"grad #{i} {tuple(b.shape)} through the hand-off: {rel_err(a, b):.2e}"
            )


@pytest.mark.parametrize("strategy", ["sequential", "scan", "chunk"])
def test_mlstm_large_input_gates_do_not_overflow(strategy):
    """mLSTM input gates up to 50 (e^50 ≈ 5e21 per step) stay finite and exact in fp32."""
    spec = ops.mlstm_spec
    if not _built_for(spec, strategy):
        pytest.skip(f"{strategy} not built")
    from scandsl.testing import random_spec_inputs

    x = random_spec_inputs(spec, B=1, T=150, H=2, sizes={"K": 16, "V": 16}, seed=1)
    x["i"] = torch.rand(1, 150, 2, generator=torch.Generator().manual_seed(2)) * 50
    ref, _ = ops.mlstm(**{k: v.double() for k, v in x.items()}, strategy="reference")
    o, (S, z) = ops.mlstm(
        **{k: v.to(DEVICE) for k, v in x.items()}, strategy=strategy, output_final_state=True
    )
    assert torch.isfinite(S).all() and torch.isfinite(z).all() and S.abs().max() > 1e20
    assert rel_err(o, ref) <= OUT_TOL


@pytest.mark.parametrize("name, strategy", list(_rows_and_strategies()))
def test_half_features_with_fp32_gates(name, strategy):
    """Inputs as models keep them: per-step features (q, k, v, slot weights) in half precision,
    gates and per-head parameters in float32. Derived operands then mix dtypes (gated_rfa's
    ``(1 − e^g) v``, mLSTM's ``e^i k``), which tensor-core products refuse unless the strategy
    unifies them — the interpreter checks dot operand dtypes like the GPU compiler does (the GPU
    run of 2026-11-23 found gated_rfa and mlstm failing to compile this way). Checked against the
    reference on the very same (rounded) values, within the half-precision band.

    float16, not bfloat16: Triton 3.9's interpreter returns garbage (~1e10) for any ``tl.dot`` of
    bfloat16 operands, even a loaded tile times itself, so bf16 numerics are checked on the GPU."""
    _built(name, strategy)
    gen = torch.Generator().manual_seed(23)
    kw64, _, _, sc = case(name, gen, B=1, T=19)
    decls = ops.TAXONOMY[name][1][-1].input_decls

    def as_model_keeps(key, t):
        d = decls[key]
        feature = d.time and bool(d.axes) and not d.is_log_gate
        return t.detach().to(DEVICE, HALF if feature else torch.float32).requires_grad_()

    kw = {k: (as_model_keeps(k, v) if isinstance(v, torch.Tensor) else v) for k, v in kw64.items()}
    kw_ref = {k: (v.detach().double().cpu().requires_grad_() if isinstance(v, torch.Tensor) else v)
              for k, v in kw.items()}  # fmt: skip
    fn = ops.TAXONOMY[name][0]
    o, _ = fn(**kw, scale=sc, strategy=strategy)
    o_ref, _ = fn(**kw_ref, scale=sc, strategy="reference")
    out_tol, grad_tol = TOLERANCES[HALF]
    feature_dtype = kw["v"].dtype if "v" in kw else HALF
    assert o.dtype == feature_dtype, f"output in {o.dtype}, features in {feature_dtype}"
    assert rel_err(o, o_ref) <= out_tol, f"output rel err {rel_err(o, o_ref):.2e}"
    w = torch.randn(o.shape, generator=gen, dtype=torch.float64)
    leaves = [t for t in kw.values() if isinstance(t, torch.Tensor)]
    leaves_ref = [t for t in kw_ref.values() if isinstance(t, torch.Tensor)]
    ga = torch.autograd.grad((o.double().cpu() * w).sum(), leaves, allow_unused=True)
    gb = torch.autograd.grad((o_ref * w).sum(), leaves_ref, allow_unused=True)
    for t, a, b in zip(leaves, ga, gb):
        if b is None or b.abs().max() == 0:
            continue
        assert a is not None and a.dtype == t.dtype, "each gradient comes back in its input's dtype"
        # half gradients carry a rounding of their own on top of the kernels' error
        assert rel_err(a, b) <= 2 * grad_tol, f"grad {tuple(b.shape)} rel err {rel_err(a, b):.2e}"
