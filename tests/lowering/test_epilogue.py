"""The fused forward epilogue (lowering/epilogue.py) against PyTorch's evaluation of the same
output expression, on the interpreter.

Without gradients an op's output expression runs as one generated kernel; PyTorch's evaluation
(what the entry falls back to) runs here on the same core outputs, so they must agree to rounding: every row
whose output expression is fusable, fp32 and fp16, awkward sizes, inputs with permuted strides
(the kernel reads every leaf through its own strides).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from scandsl.bench._inputs import make_op_inputs, op_spec  # noqa: E402
from scandsl.lowering import epilogue, epilogue_bwd  # noqa: E402

from scandsl._core import Shape  # noqa: E402
from scandsl._expr import Input, Op, Read  # noqa: E402

FUSED = ["mamba", "s4", "mlstm", "gated_rfa", "rwkv6"]
NOT_FUSED = ["gla", "abc", "gsa", "deltanet"]  # a bare read-out, or a softmax between reads


def _strided(x: torch.Tensor) -> torch.Tensor:
    """The same values with [B,T,H,*] memory laid out H-major: a non-contiguous view."""
    return x.transpose(1, 2).contiguous().transpose(1, 2) if x.dim() == 4 else x


@pytest.mark.parametrize(
    "name, dtype", [(n, torch.float32) for n in FUSED] + [("mamba", torch.float16), ("rwkv6", torch.float16)]
)
def test_fused_matches_pytorch(name, dtype, monkeypatch):
    fn, spec = op_spec(name)
    assert epilogue.plan(spec.output) is not None
    ran = []
    real = epilogue.run
    monkeypatch.setattr(epilogue, "run", lambda *a, **k: ran.append(1) or real(*a, **k))
    strategy = "sequential"  # the fastest on the interpreter; the epilogue does not depend on it
    x = {
        k: _strided(v) for k, v in make_op_inputs(name, Shape(2, 19, 3, 16, 24), dtype, "cpu", seed=3).items()
    }
    with torch.no_grad():
        fused, _ = fn(**x, strategy=strategy)
    assert ran, "the no-grad call did not take the fused epilogue"
    leaves = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in x.items()}
    ran.clear()
    monkeypatch.setattr(epilogue_bwd, "apply", lambda *a, **k: None)  # PyTorch's evaluation
    eager, _ = fn(**leaves, strategy=strategy)
    assert not ran, "the differentiable path must not take the forward-only call"
    assert fused.dtype == eager.dtype == x["v"].dtype
    assert fused.shape == eager.shape
    assert torch.isfinite(fused).all()
    err = (fused.float() - eager.float()).abs().max() / eager.float().abs().max()
    assert err <= (1e-6 if dtype == torch.float32 else 2e-3), float(err)


@pytest.mark.parametrize("name", NOT_FUSED)
def test_not_fusable_keeps_pytorch(name):
    _, spec = op_spec(name)
    assert epilogue.plan(spec.output) is None


def test_generated_source_is_readable():
    out = Op(
        "add",
        (
            Read("S", "new", Input("q", ("K",)), ("V",)),
            Op("mul", (Input("D", ("V",), False), Input("v", ("V",))), ("V",)),
        ),
        ("V",),
    )
    leaves = epilogue.plan(out)
    assert [type(lf.node).__name__ for lf in leaves] == ["Read", "Input", "Input"]
    src = epilogue.generate_source(out, leaves)
    assert "def epilogue_kernel(" in src and "x1 = tl.load(p1 + i_h" in src and "# Input D" in src
    assert "e0 = x1 * x2" in src and "e1 = x0 + e0" in src
    compile(src, "epilogue", "exec")


def test_wide_features_fall_back():
    """Features wider than the kernel's tiles take PyTorch's path (``run`` answers None)."""
    _, spec = op_spec("mamba")
    assert epilogue.run(spec.output, {}, {}, {"V": 512, "K": 16}, torch.float32) is None
