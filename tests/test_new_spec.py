"""A sixteenth model needs only a spec: Gated Retention with a fused σ(x)^{1/τ} gate, a GLA
whose gate takes raw pre-activations, and a custom DSL feature map (docs/writing-a-spec.md)."""

import pytest
import torch
import torch.nn.functional as F

import scandsl
from scandsl import Key, Scalar, State, Value, outer, recurrence, relu, sigmoid
from scandsl._validate import _built_for
from scandsl.testing import rel_err

TAU = 16.0


@recurrence(formula="S_t = σ(x_t)^{1/τ} S_{t-1} + v_t k_tᵀ ;  o_t = S_t q_t")
def gated_retention(S: State[Value, Key], q: Key, k: Key, v: Value, x: Scalar):
    S = S * sigmoid(x) ** (1 / TAU) + outer(v, k)
    return S @ q, S


@recurrence
def gla_fused_gate(S: State[Value, Key], q: Key, k: Key, v: Value, a: Key):
    S = S * sigmoid(a) ** (1 / TAU) + outer(v, k)
    return S @ q, S


def _inputs(B=2, T=13, H=2, K=5, V=7, gate_axes=(), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_()
    return r(B, T, H, K), r(B, T, H, K), r(B, T, H, V), r(B, T, H, *gate_axes)


def _literal(q, k, v, x, scale):
    B, T, H, V = v.shape
    S = torch.zeros(B, H, V, q.shape[-1], dtype=q.dtype)
    outs = []
    for t in range(T):
        a = torch.sigmoid(x[:, t]) ** (1 / TAU)  # [B,H] or [B,H,K]
        a = a[..., None, None] if a.dim() == 2 else a[..., None, :]
        S = a * S + v[:, t, :, :, None] * k[:, t, :, None, :]
        outs.append(torch.einsum("bhvk,bhk->bhv", S, q[:, t] * scale))
    return torch.stack(outs, 1)


@pytest.mark.parametrize("spec, gate_axes", [(gated_retention, ()), (gla_fused_gate, (5,))])
def test_new_spec_reference_matches_literal(spec, gate_axes):
    q, k, v, x = _inputs(gate_axes=gate_axes)
    o, _ = scandsl.run(spec, q=q, k=k, v=v, **{"x" if not gate_axes else "a": x}, strategy="reference")
    want = _literal(q, k, v, x, 5**-0.5)
    assert (o - want).abs().max() < 1e-10
    ga = torch.autograd.grad(o.sum(), [q, k, v, x])
    gb = torch.autograd.grad(want.sum(), [q, k, v, x])
    for a, b in zip(ga, gb):
        assert (a - b).abs().max() < 1e-9


def test_new_spec_classifies_into_existing_kernels():
    assert gated_retention.normal_form.stages[0].sig.decay.value == "scalar"
    assert gla_fused_gate.normal_form.stages[0].sig.decay.value == "key"
    assert gated_retention.legal_strategies == ("reference", "sequential", "scan", "chunk")


@pytest.mark.parametrize("strategy", ["sequential", "chunk", "scan"])
def test_new_spec_runs_on_kernels(strategy):
    if not _built_for(gated_retention, strategy):
        pytest.skip(f"{strategy} not built")
    q, k, v, x = _inputs(T=21)
    x32 = [t.detach().float().requires_grad_() for t in (q, k, v, x)]
    o, _ = scandsl.run(gated_retention, q=x32[0], k=x32[1], v=x32[2], x=x32[3], strategy=strategy)
    ref, _ = scandsl.run(gated_retention, q=q, k=k, v=v, x=x, strategy="reference")
    assert rel_err(o, ref) < 2e-4
    ga = torch.autograd.grad(o.sum(), x32)
    gb = torch.autograd.grad(ref.sum(), [q, k, v, x])
    for a, b in zip(ga, gb):
        assert rel_err(a, b) < 2e-3


def test_custom_feature_map_written_in_the_dsl():
    q, k, v, _ = _inputs()
    fm = lambda x: relu(x) ** 2
    o, _ = scandsl.ops.linear_attn(q, k, v, feature_map=fm, strategy="reference")
    qs = F.relu(q * 5**-0.5) ** 2
    ks = F.relu(k) ** 2
    S = torch.zeros(2, 2, 7, 5, dtype=torch.float64)
    outs = []
    for t in range(q.shape[1]):
        S = S + v[:, t, :, :, None] * ks[:, t, :, None, :]
        outs.append(torch.einsum("bhvk,bhk->bhv", S, qs[:, t]))
    want = torch.stack(outs, 1)
    assert (o - want).abs().max() < 1e-10
