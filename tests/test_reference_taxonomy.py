"""Every taxonomy row: strategy="reference" (the spec interpreted) against an independent
literal loop of the table's formula, float64, outputs + final states + gradients."""

from __future__ import annotations

import literal as L
import pytest
import torch
import torch.nn.functional as F

from scandsl import ops

B, T, H, K, V, M, N = 2, 7, 2, 5, 6, 3, 4
TOL = 1e-10


def _r(gen, *shape, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()


def _gate(gen, *shape):
    return F.logsigmoid(torch.randn(*shape, generator=gen, dtype=torch.float64) + 2).detach().requires_grad_()


def _mt(x):  # API state [B,H,K,V] -> math [B,H,V,K]
    return x.transpose(-1, -2)


def case(name, gen, B=B, T=T):
    """(op kwargs, literal(scaled inputs) -> (o, [math states]), api->math state converters, scale)."""
    sc = 0.7
    q, k, v = _r(gen, B, T, H, K), _r(gen, B, T, H, K, scale=0.5), _r(gen, B, T, H, V)
    S0 = _r(gen, B, H, K, V, scale=0.3)
    if name == "linear_attn":
        kw = dict(q=q, k=k, v=v, feature_map="elu+1", normalize=True)
        z0 = (torch.rand(B, H, K, generator=gen, dtype=torch.float64) + 1).requires_grad_()
        return kw, (S0, z0), lambda: L.linear_attn(q * sc, k, v, _mt(S0), z0, True, L.elu1), sc
    if name == "deltanet":
        kn = F.normalize(k, dim=-1)
        beta = torch.sigmoid(_r(gen, B, T, H)).detach().requires_grad_()
        return dict(q=q, k=kn, v=v, beta=beta), (S0,), lambda: L.deltanet(q * sc, kn, v, beta, _mt(S0)), sc
    if name == "gated_rfa":
        g = _gate(gen, B, T, H)
        z0 = (torch.rand(B, H, K, generator=gen, dtype=torch.float64) + 1).requires_grad_()
        kp, qp = k.abs() + 0.5, q.abs() + 0.5  # positive features keep zᵀq away from 0
        return (
            dict(q=qp, k=kp, v=v, g=g),
            (S0, z0),
            lambda: L.gated_rfa(qp * sc, kp, v, g, _mt(S0), z0),
            sc,
        )
    if name == "s4":
        dt = (torch.rand(H, V, generator=gen, dtype=torch.float64) + 0.1).requires_grad_()
        A_log, Bm, C, D = _r(gen, H, V, N, scale=0.5), _r(gen, H, V, N), _r(gen, H, V, N), _r(gen, H, V)
        S0 = _r(gen, B, H, N, V, scale=0.3)
        kw = dict(v=v, dt=dt, A_log=A_log, B=Bm, C=C, D=D)
        return kw, (S0,), lambda: L.s4(v, dt, A_log, Bm, C, D, _mt(S0)), None
    if name in ("abc", "gsa"):
        phi = torch.rand(B, T, H, M, generator=gen, dtype=torch.float64).requires_grad_()
        g = _gate(gen, B, T, H, M) if name == "gsa" else None
        Sk0, Sv0 = _r(gen, B, H, K, M, scale=0.3), _r(gen, B, H, M, V, scale=0.3)
        kw = dict(q=q, k=k, v=v, phi=phi) | ({"g": g} if g is not None else {})
        # API layout = transpose of the spec's (Sk: [M,K]) -> [K,M]; Sv: [V,M] -> [M,V]
        return kw, (Sk0, Sv0), lambda: L.abc(q * sc, k, v, phi, Sk0, _mt(Sv0), g), sc
    if name == "dfw":
        gv, gk = _gate(gen, B, T, H, V), _gate(gen, B, T, H, K)
        return dict(q=q, k=k, v=v, gv=gv, gk=gk), (S0,), lambda: L.dfw(q * sc, k, v, gv, gk, _mt(S0)), sc
    if name == "retention":
        gamma = _gate(gen, H)
        return dict(q=q, k=k, v=v, gamma=gamma), (S0,), lambda: L.retention(q * sc, k, v, gamma, _mt(S0)), sc
    if name == "mamba":
        qn, kn = _r(gen, B, T, H, N), _r(gen, B, T, H, N)
        dt = (torch.rand(B, T, H, V, generator=gen, dtype=torch.float64) + 0.05).requires_grad_()
        A_log, D = _r(gen, H, V, N, scale=0.5), _r(gen, H, V)
        S0 = _r(gen, B, H, N, V, scale=0.3)
        kw = dict(q=qn, k=kn, v=v, dt=dt, A_log=A_log, D=D)
        return kw, (S0,), lambda: L.mamba(qn * sc, kn, v, dt, A_log, D, _mt(S0)), sc
    if name == "gla":
        gk = _gate(gen, B, T, H, K)
        return dict(q=q, k=k, v=v, gk=gk), (S0,), lambda: L.gla(q * sc, k, v, gk, _mt(S0)), sc
    if name == "rwkv6":
        gk, u = _gate(gen, B, T, H, K), _r(gen, H, K)
        return dict(q=q, k=k, v=v, gk=gk, u=u), (S0,), lambda: L.rwkv6(q * sc, k, v, gk, u, _mt(S0)), sc
    if name == "hgrn2":
        gk = _gate(gen, B, T, H, K)
        return dict(q=q, v=v, gk=gk), (S0,), lambda: L.hgrn2(q * sc, v, gk, _mt(S0)), sc
    if name == "mlstm":
        i, f = _r(gen, B, T, H), _gate(gen, B, T, H)
        z0 = _r(gen, B, H, K, scale=0.3)
        return dict(q=q, k=k, v=v, i=i, f=f), (S0, z0), lambda: L.mlstm(q * sc, k, v, i, f, _mt(S0), z0), sc
    if name == "mamba2":
        g = _gate(gen, B, T, H)
        return dict(q=q, k=k, v=v, g=g), (S0,), lambda: L.mamba2(q * sc, k, v, g, _mt(S0)), sc
    if name == "gated_deltanet":
        kn = F.normalize(k, dim=-1)
        g, beta = _gate(gen, B, T, H), torch.sigmoid(_r(gen, B, T, H)).detach().requires_grad_()
        return (
            dict(q=q, k=kn, v=v, g=g, beta=beta),
            (S0,),
            lambda: L.deltanet(q * sc, kn, v, beta, _mt(S0), g=g),
            sc,
        )
    raise KeyError(name)


def _api(states_math, init):
    """Literal final states (math orientation) -> API layout, matching each initial state's shape."""
    out = []
    for s, s0 in zip(states_math, init):
        out.append(s if s.shape == s0.shape else s.transpose(-1, -2))
    return out


@pytest.mark.parametrize("name", list(ops.TAXONOMY))
def test_reference_matches_literal_loop(name):
    gen = torch.Generator().manual_seed(hash(name) % 2**31)
    kw, init, lit, sc = case(name, gen)
    fn = ops.TAXONOMY[name][0]
    init_arg = init[0] if len(init) == 1 else init
    o, final = fn(**kw, scale=sc, initial_state=init_arg, output_final_state=True, strategy="reference")
    finals = (final,) if len(init) == 1 else final
    o_lit, states_lit = lit()
    states_lit = _api(states_lit, init)
    assert o.dtype == torch.float64 and o.shape == o_lit.shape
    assert (o - o_lit).abs().max() / o_lit.abs().max() < TOL
    for got, want in zip(finals, states_lit):
        assert got.shape == want.shape
        assert (got - want).abs().max() / want.abs().max() < TOL

    # gradients of a random projection of everything, w.r.t. every input and initial state
    w = torch.randn_like(o)
    ws = [torch.randn_like(s) for s in finals]
    leaves = [t for t in list(kw.values()) + list(init) if isinstance(t, torch.Tensor) and t.requires_grad]

    def loss(out, states):
        return (out * w).sum() + sum((s * wi).sum() for s, wi in zip(states, ws))

    g_ours = torch.autograd.grad(loss(o, finals), leaves, allow_unused=True)
    g_lit = torch.autograd.grad(loss(o_lit, states_lit), leaves, allow_unused=True)
    for leaf, a, b in zip(leaves, g_ours, g_lit):
        assert (a is None) == (b is None)
        if a is not None:
            assert (a - b).abs().max() <= TOL * max(1.0, b.abs().max().item()), leaf.shape
