"""The fused epilogue's generated backward (lowering/epilogue_bwd.py), on the interpreter.

Every row with a fusable output expression: the gradients of all its inputs through the kernels
(the epilogue's backward one generated kernel) against ``strategy="reference"`` (PyTorch's
autograd over the generic loop), at awkward sizes (T=13, K=24, V=40: padded lanes and rows), with
inputs in permuted strides and every buffer the epilogue's kernels write NaN-poisoned. Then the
generator alone on a hand-built expression that takes every op it knows, a per-step scalar, per-head
vectors and scalars, a scaled leaf, a DAG (one leaf used several times) and the subgradient ties
(``abs`` at 0, ``relu`` at 0, ``maximum`` / ``minimum`` of equal operands), against PyTorch's autograd.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from scandsl.bench._inputs import make_op_inputs, op_spec  # noqa: E402
from scandsl.lowering import epilogue, epilogue_bwd  # noqa: E402

from scandsl._core import Shape  # noqa: E402
from scandsl._expr import Const, Dot, Input, MatVec, Op, Outer, Read, evaluate  # noqa: E402
from scandsl.testing import TOLERANCES, assert_close  # noqa: E402

FUSED = ["mamba", "s4", "mlstm", "gated_rfa", "rwkv6"]


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setitem(epilogue.POISON, "enabled", True)


def _strided(x: torch.Tensor) -> torch.Tensor:
    """The same values with [B,T,H,*] memory laid out H-major: a non-contiguous view."""
    return x.transpose(1, 2).contiguous().transpose(1, 2) if x.dim() == 4 else x


def _grads(fn, x: dict, strategy: str):
    leaves = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in x.items()}
    o, _ = fn(**leaves, strategy=strategy)
    w = torch.randn(o.shape, generator=torch.Generator().manual_seed(1)).to(o.dtype)
    (o.float() * w.float()).sum().backward()
    return o, {k: v.grad for k, v in leaves.items() if v.is_floating_point()}


@pytest.mark.parametrize("name", FUSED)
def test_op_gradients_match_reference(name, monkeypatch):
    fn, spec = op_spec(name)
    calls = []
    real = epilogue_bwd.backward
    monkeypatch.setattr(epilogue_bwd, "backward", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = {
        k: _strided(v)
        for k, v in make_op_inputs(name, Shape(2, 13, 2, 24, 40), torch.float32, "cpu", seed=5).items()
    }
    o, got = _grads(fn, x, "sequential")
    assert calls, "the gradient did not go through the generated epilogue backward"
    ro, ref = _grads(fn, x, "reference")
    tol_out, tol_grad = TOLERANCES[torch.float32]
    assert_close(o, ro, tol_out, "o")
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].dtype == x[k].dtype
        assert_close(got[k], ref[k], tol_grad, f"d{k}")


def test_low_precision_gradients_in_leaf_dtypes(monkeypatch):
    """bf16 inputs with an fp32 per-head parameter (rwkv6's u): each gradient in its leaf's dtype,
    equal to PyTorch's evaluation of the epilogue on the same core outputs to bf16 rounding."""
    fn, _ = op_spec("rwkv6")
    x = make_op_inputs("rwkv6", Shape(1, 9, 2, 24, 40), torch.bfloat16, "cpu", seed=6)
    x["u"] = x["u"].float()
    o, got = _grads(fn, x, "sequential")
    monkeypatch.setattr(epilogue_bwd, "apply", lambda *a, **k: None)  # PyTorch's epilogue
    ro, ref = _grads(fn, x, "sequential")
    assert o.dtype == ro.dtype == torch.bfloat16
    for k in ref:
        assert got[k].dtype == ref[k].dtype == x[k].dtype, k
        assert_close(got[k].float(), ref[k].float(), TOLERANCES[torch.bfloat16][1], f"d{k}")


def _hand_built():
    V, K = ("V",), ("K",)
    a, c, q = Input("a", V), Input("c", K), Input("q", K)
    s, D, w = Input("s", ()), Input("D", V, False), Input("w", (), False)
    silu_term = Op("mul", (D, Op("silu", (a,), V)), V)
    bonus = MatVec(Outer(Op("sigmoid", (a,), V), Op("mul", (Op("exp", (Op("neg", (c,), K),), K), q), K)), q)
    den = Op(
        "maximum",
        (Const(1.0), Op("add", (Op("abs", (Dot(Op("abs", (c,), K), q),), ()), Op("relu", (s,), ())), ())),
        (),
    )
    root = Op("sqrt", (Op("add", (Op("mul", (a, a), V), Const(1.0)), V),), V)
    soft = Op("mul", (w, Op("log", (Op("add", (Op("exp", (s,), ()), Const(1.0)), ()),), ())), ())
    ties = Op("sub", (Op("maximum", (a, Const(0.5)), V), Op("minimum", (a, Const(-0.5)), V)), V)
    out = Op(
        "add", (Op("add", (silu_term, Op("div", (bonus, den), V)), V), Op("minimum", (root, soft), V)), V
    )
    return Op("add", (out, ties), V), q


def test_hand_built_expression_matches_autograd():
    out, q = _hand_built()
    B, T, H, sizes = 2, 11, 3, {"K": 24, "V": 40}
    gen = torch.Generator().manual_seed(0)
    raw = {
        "a": torch.randn(B, T, H, 40, generator=gen),
        "c": torch.randn(B, T, H, 24, generator=gen),
        "q": torch.randn(B, T, H, 24, generator=gen),
        "s": torch.randn(B, T, H, generator=gen),
        "D": torch.randn(H, 40, generator=gen),
        "w": torch.randn(H, generator=gen).abs() + 0.5,
    }
    raw["a"][..., :3] = 0.5  # maximum(a, 0.5) ties
    raw["a"][..., 3:5] = -0.5  # minimum(a, -0.5) ties
    raw["c"][..., :2] = 0.0  # abs at 0
    raw["s"][:, :3] = 0.0  # relu at 0
    leaves = epilogue.plan(out)
    assert leaves is not None
    scale = 0.5

    def bind(x):  # per-head parameters as the entry binds them: two broadcast dims in front
        return {
            lf.node: x[lf.node.name] if lf.per_step else x[lf.node.name][None, None]
            for lf in leaves  # type: ignore[union-attr]
        }

    mine = {k: v.clone().requires_grad_() for k, v in raw.items()}
    got = epilogue_bwd.apply(out, bind(mine), {q: scale}, sizes, torch.float32)
    theirs = {k: v.clone().requires_grad_() for k, v in raw.items()}
    env = bind(theirs)
    env[q] = env[q] * scale
    ref = evaluate(out, env, sizes)
    assert_close(got, ref, 1e-6, "out")
    g = torch.randn(ref.shape, generator=gen)
    (got * g).sum().backward()
    (ref * g).sum().backward()
    for k in raw:
        assert_close(mine[k].grad, theirs[k].grad, 1e-5, f"d{k}")


def test_backward_source_reads_only_what_it_needs():
    """rwkv6's ``o + (q · (u ⊙ k)) v``: the read-out's gradient is the output's (handed on, not
    stored), so the read-out is never loaded; ``u`` is a per-program partial sum."""
    _, spec = op_spec("rwkv6")
    leaves = epilogue.plan(spec.output)
    assert leaves is not None
    kinds = [type(lf.node).__name__ for lf in leaves]
    read = kinds.index("Read")
    assert epilogue_bwd.identity_leaves(spec.output) == {read}
    stored = frozenset(range(len(leaves))) - {read}
    src = epilogue_bwd.generate_backward_source(spec.output, stored)
    assert f"x{read} = tl.load" not in src and f"d{read}" not in src
    assert "def epilogue_bwd_kernel(" in src and "tl.sum(tl.where(m_r[:, None]" in src
    compile(src, "epilogue_bwd", "exec")


def test_only_needed_gradients_and_saved_values():
    """Gradients for a subset of the leaves (the kernel's other pointers are stand-ins), and the
    forward saves only what the backward reads: for ``o + D ⊙ x`` not the read-out ``o``."""
    V = ("V",)
    read, D, x = Read("S", "new", Input("q", ("K",)), V), Input("D", V, False), Input("x", V)
    out = Op("add", (read, Op("mul", (D, x), V)), V)
    gen = torch.Generator().manual_seed(2)
    o, d, xv = (
        torch.randn(2, 7, 3, 40, generator=gen),
        torch.randn(3, 40, generator=gen),
        torch.randn(2, 7, 3, 40, generator=gen),
    )
    for needs, n_saved in [(("o", "D", "x"), 2), (("D",), 1), (("x",), 1), (("o",), 0)]:
        t = {"o": o.clone(), "D": d.clone()[None, None], "x": xv.clone()}
        for k in needs:
            t[k].requires_grad_()
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda v, saved=saved: saved.append(v) or v, lambda v: v
        ):
            got = epilogue_bwd.apply(
                out, {read: t["o"], D: t["D"], x: t["x"]}, {}, {"K": 8, "V": 40}, torch.float32
            )
        assert not any(v is t["o"] for v in saved), "the read-out was saved for the backward"
        assert len(saved) == n_saved, needs  # dD reads x, dx reads D
        g = torch.randn(got.shape, generator=gen)
        grads = torch.autograd.grad(got, [t[k] for k in needs], g)
        want = {"o": g, "D": (g * xv).sum((0, 1), keepdim=True), "x": g * d}
        for k, gk in zip(needs, grads):
            assert_close(gk, want[k], 1e-6, f"d{k}")
