"""Hand-written literal loops of the taxonomy table's formulas — independent of the DSL.

Math orientation (S is [V, K]); inputs already scaled; float64. Each returns
(o [B,T,H,V], final state(s) in API layout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _loop(B, T, H, init, step):
    outs = torch.zeros(B, T, H, *step.out_shape, dtype=torch.float64)
    finals = []
    rows = []
    for b in range(B):
        st = [s[b].clone() for s in init]
        seq = []
        for t in range(T):
            st, o = step(b, t, st)
            seq.append(o)
        rows.append(torch.stack(seq))
        finals.append(st)
    outs = torch.stack(rows)
    return outs, [torch.stack([f[i] for f in finals]) for i in range(len(init))]


class _Step:
    def __init__(self, out_shape, fn):
        self.out_shape = out_shape
        self.fn = fn

    def __call__(self, b, t, st):
        return self.fn(b, t, st)


def mv(S, x):  # [H,V,K] @ [H,K] -> [H,V]
    return torch.einsum("hvk,hk->hv", S, x)


def ot(a, b):  # [H,V], [H,K] -> [H,V,K]
    return a[:, :, None] * b[:, None, :]


def linear_attn(q, k, v, S0, z0=None, normalize=False, fmap=lambda x: x):
    B, T, H, V = v.shape

    def f(b, t, st):
        S = st[0] + ot(v[b, t], fmap(k[b, t]))
        if not normalize:
            return [S], mv(S, fmap(q[b, t]))
        z = st[1] + fmap(k[b, t])
        return [S, z], mv(S, fmap(q[b, t])) / (z * fmap(q[b, t])).sum(-1, keepdim=True)

    init = [S0] if not normalize else [S0, z0]
    return _loop(B, T, H, init, _Step((V,), f))


def deltanet(q, k, v, beta, S0, g=None):
    B, T, H, V = v.shape
    K = k.shape[-1]
    eye = torch.eye(K, dtype=torch.float64)

    def f(b, t, st):
        kt, bt = k[b, t], beta[b, t]
        Tm = eye - bt[:, None, None] * kt[:, :, None] * kt[:, None, :]
        S = torch.einsum("hvk,hkj->hvj", st[0], Tm)
        if g is not None:
            S = torch.exp(g[b, t])[:, None, None] * S
        S = S + ot(bt[:, None] * v[b, t], kt)
        return [S], mv(S, q[b, t])

    return _loop(B, T, H, [S0], _Step((V,), f))


def gated_rfa(q, k, v, g, S0, z0):
    B, T, H, V = v.shape

    def f(b, t, st):
        a = torch.exp(g[b, t])[:, None]
        S = a[:, :, None] * st[0] + (1 - a)[:, :, None] * ot(v[b, t], k[b, t])
        z = a * st[1] + (1 - a) * k[b, t]
        return [S, z], mv(S, q[b, t]) / (z * q[b, t]).sum(-1, keepdim=True)

    return _loop(B, T, H, [S0, z0], _Step((V,), f))


def s4(v, dt, A_log, Bm, C, D, S0):
    B, T, H, V = v.shape
    decay = torch.exp(-dt[:, :, None] * torch.exp(A_log))  # [H,V,N]

    def f(b, t, st):
        S = st[0] * decay + Bm * v[b, t][:, :, None]
        return [S], (S * C).sum(-1) + D * v[b, t]

    return _loop(B, T, H, [S0], _Step((V,), f))


def abc(q, k, v, phi, Sk0, Sv0, g=None):
    """S^k [K, M], S^v [V, M] as in the table; initial states given in math orientation."""
    B, T, H, V = v.shape

    def f(b, t, st):
        Sk, Sv = st
        if g is not None:
            a = torch.exp(g[b, t])[:, None, :]
            Sk, Sv = Sk * a, Sv * a
        Sk = Sk + ot(k[b, t], phi[b, t])
        Sv = Sv + ot(v[b, t], phi[b, t])
        p = torch.softmax(torch.einsum("hkm,hk->hm", Sk, q[b, t]), -1)
        return [Sk, Sv], mv(Sv, p)

    return _loop(B, T, H, [Sk0, Sv0], _Step((V,), f))


def dfw(q, k, v, gv, gk, S0):
    B, T, H, V = v.shape

    def f(b, t, st):
        L = torch.exp(gv[b, t])[:, :, None] * torch.exp(gk[b, t])[:, None, :]
        S = st[0] * L + ot(v[b, t], k[b, t])
        return [S], mv(S, q[b, t])

    return _loop(B, T, H, [S0], _Step((V,), f))


def retention(q, k, v, gamma, S0):
    B, T, H, V = v.shape

    def f(b, t, st):
        S = torch.exp(gamma)[:, None, None] * st[0] + ot(v[b, t], k[b, t])
        return [S], mv(S, q[b, t])

    return _loop(B, T, H, [S0], _Step((V,), f))


def mamba(q, k, v, dt, A_log, D, S0):
    B, T, H, V = v.shape

    def f(b, t, st):
        L = torch.exp(-dt[b, t][:, :, None] * torch.exp(A_log))
        S = st[0] * L + ot(dt[b, t] * v[b, t], k[b, t])
        return [S], mv(S, q[b, t]) + D * v[b, t]

    return _loop(B, T, H, [S0], _Step((V,), f))


def gla(q, k, v, gk, S0):
    B, T, H, V = v.shape

    def f(b, t, st):
        S = st[0] * torch.exp(gk[b, t])[:, None, :] + ot(v[b, t], k[b, t])
        return [S], mv(S, q[b, t])

    return _loop(B, T, H, [S0], _Step((V,), f))


def rwkv6(q, k, v, gk, u, S0):
    B, T, H, V = v.shape

    def f(b, t, st):
        prev = st[0]
        o = mv(prev + ot(v[b, t], u * k[b, t]), q[b, t])
        S = prev * torch.exp(gk[b, t])[:, None, :] + ot(v[b, t], k[b, t])
        return [S], o

    return _loop(B, T, H, [S0], _Step((V,), f))


def hgrn2(q, v, gk, S0):
    B, T, H, V = v.shape

    def f(b, t, st):
        a = torch.exp(gk[b, t])
        S = st[0] * a[:, None, :] + ot(v[b, t], 1 - a)
        return [S], mv(S, q[b, t])

    return _loop(B, T, H, [S0], _Step((V,), f))


def mlstm(q, k, v, i, f_, S0, z0):
    B, T, H, V = v.shape

    def f(b, t, st):
        fa, ia = torch.exp(f_[b, t]), torch.exp(i[b, t])
        S = fa[:, None, None] * st[0] + ia[:, None, None] * ot(v[b, t], k[b, t])
        z = fa[:, None] * st[1] + ia[:, None] * k[b, t]
        den = torch.clamp((z * q[b, t]).sum(-1, keepdim=True).abs(), min=1.0)
        return [S, z], mv(S, q[b, t]) / den

    return _loop(B, T, H, [S0, z0], _Step((V,), f))


def mamba2(q, k, v, g, S0):
    B, T, H, V = v.shape

    def f(b, t, st):
        S = torch.exp(g[b, t])[:, None, None] * st[0] + ot(v[b, t], k[b, t])
        return [S], mv(S, q[b, t])

    return _loop(B, T, H, [S0], _Step((V,), f))


def elu1(x):
    return F.elu(x) + 1
