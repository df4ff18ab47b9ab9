"""Precision of the chunked scalar-decay kernels on mixed operand dtypes (mLSTM, gated_rfa).

The interpreter computes bfloat16 ``tl.dot`` wrongly, so the tensor cores' operand rounding is
emulated instead: the generated module runs on float32 inputs with every ``tl.dot`` replaced by
one that first rounds both operands to nearest-even at a given mantissa width (7 bits: bfloat16,
10 bits: tf32) and then multiplies exactly. Rounding a dot's operands is all a tensor core does
to them (the accumulation is float32), so this reproduces the kernels' own roundings of states,
scores and decayed tiles, as well as those of the operands.

mLSTM at B=1 T=128 H=4 K=V=128 (``bench/gpu_diagnose.py``'s inputs, fewer heads): with the
operands narrowed to bfloat16 (chunk.py before 2026-11-24) its gradients leave the band; widened to
float32 (``chunk_scalar._widen_mixed``: tf32x3 products forward, tf32 backward) they are inside it.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402
from scandsl.bench._inputs import make_op_inputs  # noqa: E402
from scandsl.lowering import chunk_scalar, chunk_scalar_launch  # noqa: E402
from scandsl.lowering._source import load_source  # noqa: E402

from scandsl import ops  # noqa: E402
from scandsl._core import CoreSig, Decay, Shape, core_reference  # noqa: E402
from scandsl.testing import TOLERANCES, assert_close, random_core_inputs, rel_err  # noqa: E402

_ROUNDED_DOT = '''

@triton.jit
def _round(x):
    """x (fp32) rounded to nearest-even, DROP low mantissa bits cleared."""
    b = x.to(tl.float32).to(tl.uint32, bitcast=True)
    b = (b + HALF + ((b >> DROP) & 1)) & KEEP
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _rounded_dot(a, b, acc=None, input_precision=None):
    """tl.dot as a tensor core computes it: operands rounded, products accumulated in fp32."""
    return tl.dot(_round(a), _round(b), acc, input_precision="ieee")
'''


# mantissa bits a tensor core keeps of a dot operand, by the kernels' fp32 precision; tf32x3
# (three tf32 products) is taken as exact: its error (~2^-22) is far below what is measured here
_TENSOR_CORE_BITS = {"ieee": None, "tf32x3": None, "tf32": 10}
_BF16_BITS = 7


def _emulating_kernels(bits: int | None = None):
    """A stand-in for ``chunk_scalar_launch.kernels``: the generated module with every dot's
    operands rounded to ``bits`` mantissa bits, or by its precision (``_TENSOR_CORE_BITS``)."""

    def kernels(sig: CoreSig, fp32_dot: str):
        keep = bits if bits is not None else _TENSOR_CORE_BITS[fp32_dot]
        src = chunk_scalar.generate_source(sig, {"fp32_dot": fp32_dot})
        if keep is None:
            return load_source(src, name=f"chunk_scalar_{sig.decay.value}_exact")
        drop = 23 - keep
        consts = (
            f"DROP = tl.constexpr({drop})\nHALF = tl.constexpr({(1 << (drop - 1)) - 1})\n"
            f"KEEP = tl.constexpr({(0xFFFFFFFF >> drop) << drop})\n"
        )
        head, body = src.split("\n\n@triton.jit\ndef _bounds", 1)
        assert "tl.dot(" in body
        body = body.replace("tl.dot(", "_rounded_dot(")
        src = head + "\n" + consts + _ROUNDED_DOT + "\n\n@triton.jit\ndef _bounds" + body
        return load_source(src, name=f"chunk_scalar_{sig.decay.value}_rounded{keep}")

    return kernels


SMALL = Shape(B=1, T=128, H=4, K=128, V=128)


def _mlstm_errors(monkeypatch, *, narrow: bool, shape: Shape = SMALL) -> dict[str, float]:
    """Relative errors of mLSTM's output and gradients (bf16 features, fp32 gates) against the
    fp32 reference, through the chunk kernels with emulated tensor-core rounding: ``narrow``, as
    the narrowing cast ran them (the value ``e^i [v, 1]`` and every dot operand in bfloat16, the
    16-bit tiles), else as chunk_scalar runs them now (widened, ``MIXED_DOT``'s precisions)."""
    x = make_op_inputs("mlstm", shape, torch.bfloat16, "cpu", seed=0)
    ref = {k: v.detach().float().requires_grad_() for k, v in x.items()}
    o_ref, _ = ops.mlstm(**ref, strategy="reference")
    do = torch.randn(o_ref.shape, generator=torch.Generator().manual_seed(11))
    o_ref.backward(do)

    monkeypatch.setattr(chunk_scalar_launch, "kernels", _emulating_kernels(_BF16_BITS if narrow else None))
    if narrow:
        real_run = chunk_scalar.run

        def run(sig, core, config=None):
            core.v = core.v.to(torch.bfloat16).float()
            tiles = chunk_scalar.default_config(sig, Shape(core.B, core.T, core.H, core.K, core.V))
            return real_run(sig, core, tiles)

        monkeypatch.setattr(chunk_scalar, "run", run)
    got = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    o, _ = ops.mlstm(**got, strategy="chunk")
    o.float().backward(do)
    errs = {"o": rel_err(o, o_ref)}
    for name, t in got.items():
        assert t.grad.dtype == x[name].dtype
        errs[f"d{name}"] = rel_err(t.grad, ref[name].grad)
    return errs


def test_mlstm_narrowed_to_bf16_leaves_the_band(monkeypatch):
    errs = _mlstm_errors(monkeypatch, narrow=True)
    assert max(errs[g] for g in ("dq", "dk", "di")) > 1e-2, errs


def test_mlstm_widened_is_inside_the_band(monkeypatch):
    errs = _mlstm_errors(monkeypatch, narrow=False)
    assert max(errs.values()) <= 1e-2, errs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_operands_run_in_float32_with_tf32_products(monkeypatch, dtype):
    """q and k in a 16-bit dtype with a float32 value: run widened (no 16-bit tl.dot, so bf16
    runs on the interpreter too), gradients back in each operand's own dtype."""
    sig = CoreSig(decay=Decay.SCALAR)
    x = random_core_inputs(sig, B=1, T=37, H=2, K=24, V=40, dtype=torch.float32, seed=5)
    x.q, x.k = x.q.to(dtype), x.k.to(dtype)
    for t in (x.q, x.k, x.v, x.g, x.initial_state):
        t.requires_grad_(True)
    precisions = []
    real = chunk_scalar_launch.kernels
    monkeypatch.setattr(chunk_scalar_launch, "kernels", lambda s, p: precisions.append(p) or real(s, p))
    o, ht = chunk_scalar.run(sig, x, None)
    assert precisions == [chunk_scalar.MIXED_DOT[0]] == ["tf32x3"]
    assert o.dtype == torch.float32
    ro, rht = core_reference(sig, x)
    assert_close(o, ro, 1e-5, "o")
    assert_close(ht, rht, 1e-5, "final state")
    names = ("q", "k", "v", "g", "initial_state")
    ins = [getattr(x, n) for n in names]
    got = torch.autograd.grad((o * ro.detach().cos()).sum() + ht.sum(), ins)
    want = torch.autograd.grad((ro * ro.detach().cos()).sum() + rht.sum(), ins)
    assert precisions[1:] == [chunk_scalar.MIXED_DOT[1]] == ["tf32"]
    for name, t, a, b in zip(names, ins, got, want):
        assert a.dtype == t.dtype, name
        assert_close(a.float(), b.float(), TOLERANCES[dtype][1] / 4, f"d{name}")


def test_only_a_branching_readout_keeps_mixed_operands_wide(monkeypatch):
    """mLSTM's output takes max(1, |z·q|) of a read-out: its mixed q, k, v reach chunk_scalar as they
    are (widened there); gated_rfa's plain division does not branch, so they arrive narrowed."""
    seen = {}
    real = chunk_scalar.run

    def spy(sig, core, config=None):
        seen[name] = ({core.q.dtype, core.k.dtype, core.v.dtype}, core.keep_wide)
        return real(sig, core, config)

    monkeypatch.setattr(chunk_scalar, "run", spy)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 20, 2, 8, generator=g, dtype=torch.float16) for _ in range(3))
    gate = torch.nn.functional.logsigmoid(torch.randn(1, 20, 2, generator=g))  # float32
    for name, fn, args in (
        ("mlstm", ops.mlstm, dict(q=q, k=k, v=v, i=torch.randn(1, 20, 2, generator=g), f=gate)),
        ("gated_rfa", ops.gated_rfa, dict(q=q, k=k, v=v, g=gate)),
    ):
        o, _ = fn(**args, strategy="chunk")
        ref, _ = fn(**args, strategy="reference")
        assert_close(o.float(), ref.float(), TOLERANCES[torch.float16][0], name)
    assert seen["mlstm"] == ({torch.float16, torch.float32}, True)
    assert seen["gated_rfa"] == ({torch.float16}, False)
    assert ops.mlstm_spec.branches_on_readout and not ops.gated_rfa_spec.branches_on_readout
