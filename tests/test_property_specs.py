"""Property tests: random specs (decay shape × input coefficient × read-out) at random awkward
shapes. Each one must classify as predicted, and its generated sequential kernel must match the
reference interpreter on outputs, final state and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scandsl import Key, Scalar, State, Value, exp, outer, recurrence, run, sigmoid
from scandsl._validate import _built_for
from scandsl.testing import TOLERANCES, random_spec_inputs, rel_err

DECAYS = ("none", "scalar", "key", "value", "outer")
COEFFS = ("none", "scalar", "key")


def make_spec(decay: str, coeff: str, before: bool):
    """Build a spec by composing the DSL; the body reads like its formula."""

    def body(S, q, k, v, g, gk, gv, c):
        if decay in ("scalar",):
            S = S * exp(g)
        if decay in ("key", "outer"):
            S = S * exp(gk)
        if decay in ("value", "outer"):
            S = S * exp(gv)
        key = k * sigmoid(c) if coeff == "key" else k
        value = v * sigmoid(g) if coeff == "scalar" else v
        return S + outer(value, key)

    if before:

        def fn(S: State[Value, Key], q: Key, k: Key, v: Value, g: Scalar.log_gate, gk: Key.log_gate,
               gv: Value.log_gate, c: Key):  # fmt: skip
            return S @ q, body(S, q, k, v, g, gk, gv, c)
    else:

        def fn(S: State[Value, Key], q: Key, k: Key, v: Value, g: Scalar.log_gate, gk: Key.log_gate,
               gv: Value.log_gate, c: Key):  # fmt: skip
            S = body(S, q, k, v, g, gk, gv, c)
            return S @ q, S

    return recurrence(fn, name=f"random_{decay}_{coeff}_{'before' if before else 'after'}")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    decay=st.sampled_from(DECAYS),
    coeff=st.sampled_from(COEFFS),
    before=st.booleans(),
    T=st.integers(1, 23),
    K=st.integers(1, 9),
    V=st.integers(1, 11),
    seed=st.integers(0, 2**16),
)
def test_random_spec_sequential_matches_reference(decay, coeff, before, T, K, V, seed):
    spec = make_spec(decay, coeff, before)
    (stage,) = spec.normal_form.stages
    assert stage.sig.decay.value == decay
    assert stage.sig.readout.value == ("before" if before else "after")
    if not _built_for(spec, "sequential"):
        pytest.skip("sequential kernels not built")
    x64 = random_spec_inputs(spec, B=1, T=T, H=2, sizes={"K": K, "V": V}, dtype=torch.float64, seed=seed)
    x64 = {n: t.requires_grad_() for n, t in x64.items()}
    x32 = {n: t.detach().float().requires_grad_() for n, t in x64.items()}
    o, s = run(spec, **x32, strategy="sequential", output_final_state=True)
    o_ref, s_ref = run(spec, **x64, strategy="reference", output_final_state=True)
    out_tol, grad_tol = TOLERANCES[torch.float32]
    assert rel_err(o, o_ref) <= out_tol and rel_err(s, s_ref) <= out_tol
    w = torch.randn(o_ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ga = torch.autograd.grad((o * w.float()).sum() + s.sum(), list(x32.values()), allow_unused=True)
    gb = torch.autograd.grad((o_ref * w).sum() + s_ref.sum(), list(x64.values()), allow_unused=True)
    for name, a, b in zip(x32, ga, gb):
        if b is None or float(b.abs().max()) == 0.0:
            continue
        assert a is not None and rel_err(a, b) <= grad_tol, f"d{name}: {rel_err(a, b):.2e}"
