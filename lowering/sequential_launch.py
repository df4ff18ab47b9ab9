"""Launching the sequential kernels: buffers, grids, and the PyTorch side of the backward.

The kernels come from ``sequential_codegen`` (loaded once per signature through
``_source.load_source``). This module owns everything around them: contiguous inputs,
output and partial buffers (NaN-poisoned when ``POISON`` is set, so an element a kernel
forgets to write fails the tests), the reductions of per-V-block partials, and the
log-gate gradients of factorable decays as reverse cumulative sums:

    d log Λ_t = Σ_{s ≥ t} (r_s − m_s) − [BEFORE] r_t + red(S_T ⊙ dS_T)

with ``r`` the read-out term (``q ⊙ dq`` over K, ``do ⊙ (S q)`` over V) and ``m`` the
input term (``k ⊙ dk`` over K, ``v ⊙ dv`` over V); ``red`` sums over the axes the decay
does not index. This follows from ``Σ_v dS_t ⊙ S_t`` telescoping through
``dS_{t-1} = Λ_t ⊙ dS_t T_t^T``, with or without the delta transition.
"""

from __future__ import annotations

import functools

import torch
import triton
from scandsl.lowering._source import load_source
from scandsl.lowering.sequential_codegen import backward_source, forward_source
from scandsl.lowering.sequential_codegen_channel import channel_backward_source

from scandsl._core import CoreSig, Decay, Readout, Transition
from scandsl._seqlens import host_bounds

__all__ = ["POISON", "kernel_sources", "forward", "backward"]

# Tests set this: every buffer a kernel writes starts as NaN instead of garbage.
POISON = False


def _alloc(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = torch.empty(*shape, dtype=dtype, device=device)
    return t.fill_(float("nan")) if POISON else t


def kernel_sources(sig: CoreSig, prefetch: int = 2) -> dict[str, str]:
    """Kernel name -> module source, forward first; ``prefetch`` = steps loaded ahead."""
    fwd = forward_source(sig, prefetch)
    bwd = (channel_backward_source if sig.decay is Decay.CHANNEL else backward_source)(sig, prefetch)
    return dict([fwd, bwd])


@functools.cache
def _kernels(sig: CoreSig, prefetch: int) -> tuple[object, object]:
    sources = kernel_sources(sig, prefetch)
    fwd, bwd = (getattr(load_source(src, name=name), name) for name, src in sources.items())
    return fwd, bwd


def _n_seq(x_cu: torch.Tensor | None, B: int) -> int:
    return B if x_cu is None else x_cu.numel() - 1


def _tiles(K: int, V: int, BV: int) -> tuple[int, int, int]:
    BK = triton.next_power_of_2(K)
    BV = min(BV, triton.next_power_of_2(V))
    return BK, BV, triton.cdiv(V, BV)


def _k_major(state: torch.Tensor | None) -> torch.Tensor | None:
    """An API-shaped ``[N, H, K, V]`` view whose memory is ``[N, H, V, K]`` (K contiguous)."""
    return None if state is None else state.transpose(-1, -2).contiguous().transpose(-1, -2)


def _k_major_empty(N: int, H: int, K: int, V: int, device) -> torch.Tensor:
    return _alloc(N, H, V, K, dtype=torch.float32, device=device).transpose(-1, -2)


def _state(name: str, x: torch.Tensor | None, dummy: torch.Tensor, *, read: bool = False) -> dict:
    """Pointer and (value, key) strides of an API-shaped ``[N, H, K, V]`` state argument; a state
    the kernel reads (``read``) also gets its presence flag ``<name>_on`` (codegen ``state_in``)."""
    on = {f"{name}_on": int(x is not None)} if read else {}
    if x is None:
        return {name: dummy, f"{name}_sv": 0, f"{name}_sk": 0, **on}
    return {name: x, f"{name}_sv": x.stride(3), f"{name}_sk": x.stride(2), **on}


def forward(
    sig: CoreSig,
    t: dict,
    meta: dict,
    cfg: dict,
    *,
    save_u: bool,
    ht: torch.Tensor | None = None,
    decode: bool = False,
):
    """Run the forward kernel. ``t``: contiguous tensors by CoreInputs name; returns (o, ht, u).

    Sequences move the state through K-contiguous copies (the layout the time loop computes
    in); ``decode`` and every one-step call (``T == 1``, what an op-level decoding step is) read
    and write the given state directly (in place when ``ht`` is ``t["initial_state"]``): with
    one step its layout costs less than the two copies would.
    """
    B, T, H, V = t["v"].shape
    K = t["q"].shape[-1]
    cu = meta["cu_seqlens"]
    N = _n_seq(cu, B)
    BK, BV, NV = _tiles(K, V, cfg["BV"])
    dev = t["v"].device
    o = _alloc(B, T, H, V, dtype=meta["out_dtype"], device=dev)
    if cu is not None and host_bounds(cu)[-1] != T:
        o.zero_()  # tokens after the last sequence are not any program's: the reference gives 0
    direct = decode or T == 1  # one step: the state's layout costs less than its copies
    h0 = t.get("initial_state") if direct else _k_major(t.get("initial_state"))
    if meta["output_final_state"] and ht is None:
        ht = (
            _alloc(N, H, K, V, dtype=torch.float32, device=dev) if direct else _k_major_empty(N, H, K, V, dev)
        )
    delta = sig.transition is Transition.DELTA
    u = _alloc(B, T, H, V, dtype=torch.float32, device=dev) if (delta and save_u) else None
    kern, _ = _kernels(sig, cfg["prefetch"])
    args = {
        name: t[name] for name in ("q", "k", "v", "g", "gk", "gv", "A", "beta") if name in _ptr_names(kern)
    }
    extra = {"SAVE_U": u is not None, "u_save": u if u is not None else o} if delta else {}
    kern[(NV, N * H)](
        **args,
        o=o,
        **_state("h0", h0, o, read=True),
        **_state("ht", ht, o),
        **_shared_args(meta, cu, T, H, K, V, BK, BV),
        STORE_HT=ht is not None,
        **extra,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    if ht is not None and not direct:
        ht = ht.contiguous()  # the API's [N, H, K, V] memory layout
    return o, ht, u


def _shared_args(meta: dict, cu, T: int, H: int, K: int, V: int, BK: int, BV: int) -> dict:
    """The arguments the forward and backward kernels share: sizes, tiles, scale, sequence flags."""
    return dict(cu_seqlens=cu, scale=meta["scale"], T=T, H=H, K=K, V=V, BK=BK, BV=BV,
                IS_VARLEN=cu is not None)  # fmt: skip


def _ptr_names(kern) -> set[str]:
    return set(kern.arg_names)


def backward(
    sig: CoreSig,
    t: dict,
    meta: dict,
    cfg: dict,
    do: torch.Tensor,
    dht: torch.Tensor | None,
    ht: torch.Tensor | None,
    u: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """Gradients (fp32) of every CoreInputs tensor in ``t`` given ``do`` and ``dht``."""
    B, T, H, V = t["v"].shape
    K = t["q"].shape[-1]
    cu = meta["cu_seqlens"]
    N = _n_seq(cu, B)
    BK, BV, NV = _tiles(K, V, cfg["BV_bwd"])
    dev, f32 = t["v"].device, torch.float32
    h0 = _k_major(t.get("initial_state"))
    NTOK = B * T
    g: dict[str, torch.Tensor] = {}
    buf: dict[str, torch.Tensor] = {}
    _, kern = _kernels(sig, cfg["prefetch"])
    names = _ptr_names(kern)
    for name in names:
        if name.endswith("_part") and name not in ("dbeta_part", "dgv_part"):
            shape = (N, H, V, K) if name in ("dqst_part", "dkst_part", "dA_part") else (NV, NTOK, H, K)
            buf[name] = _alloc(*shape, dtype=f32, device=dev)
    buf["dv"] = _alloc(B, T, H, V, dtype=f32, device=dev)
    if "dbeta_part" in names:
        buf["dbeta_part"] = _alloc(NV, NTOK, H, dtype=f32, device=dev)
    if "dgv_part" in names:
        buf["dgv_part"] = _alloc(N, H, V, dtype=f32, device=dev)
    for name in ("du", "dov", "dgv"):
        if name in names:
            buf[name] = _alloc(B, T, H, V, dtype=f32, device=dev)
    dh0 = _k_major_empty(N, H, K, V, dev) if h0 is not None else None
    bounds = host_bounds(cu) if cu is not None else (0, T)  # memoised: no sync after the first call
    if bounds[-1] != T:
        for b in buf.values():
            b.zero_()  # tokens outside every sequence get zero gradients
    extra: dict = {}
    if sig.transition is Transition.DELTA:
        extra["u_save"] = u
    if sig.decay is Decay.CHANNEL:
        CK = cfg["CK"]
        ncmax = max(1, triton.cdiv(max(e - s for s, e in zip(bounds, bounds[1:])), CK))
        extra.update(
            ckpt=torch.empty(N * H * ncmax * K * V, dtype=f32, device=dev),
            scratch=torch.empty(NV * N * H * CK * BK * BV, dtype=f32, device=dev),
            NCMAX=ncmax,
            CK=CK,
        )
    args = {name: t[name] for name in ("q", "k", "v", "g", "gk", "gv", "A", "beta") if name in names}
    kern[(NV, N * H)](
        **args,
        **buf,
        **extra,
        do=do,
        **_state("dht", _k_major(dht), do, read=True),
        **_state("h0", h0, do, read=True),
        **_state("dh0", dh0, do),
        **_shared_args(meta, cu, T, H, K, V, BK, BV),
        NTOK=NTOK,
        USE_H0=h0 is not None,  # the backward stores dh0 only then
        num_warps=cfg["num_warps_bwd"],
        num_stages=cfg["num_stages"],
    )
    if dh0 is not None:
        g["initial_state"] = dh0
    g["v"] = buf["dv"]
    if sig.key_static:
        g["k"] = buf["dkst_part"].sum(0)
    else:
        g["k"] = buf["dk_part"].sum(0).view(B, T, H, K)
        if "dk2_part" in buf:
            g["k"] = g["k"] + buf["dk2_part"].sum(0).view(B, T, H, K)
    if sig.query_static:
        g["q"] = buf["dqst_part"].sum(0)
    else:
        g["q"] = buf["dq_part"].sum(0).view(B, T, H, K)
    if "dbeta_part" in buf:
        g["beta"] = buf["dbeta_part"].sum(0).view(B, T, H)
    if sig.decay is Decay.CHANNEL:
        g["A"] = buf["dA_part"].sum(0)
        g["gv"] = buf["dgv_part"].sum(0) if sig.decay_static else buf["dgv"]
    elif sig.decay is not Decay.NONE:
        g.update(_gate_grads(sig, t, meta, g, buf.get("dov"), dht, ht))
    return g


def _suffix_sum(x: torch.Tensor, cu: torch.Tensor | None) -> torch.Tensor:
    """Σ_{s ≥ t} x_s within each sequence, along dim 1 of ``[B, T, ...]``."""
    c = x.flip(1).cumsum(1).flip(1)
    if cu is None:
        return c
    T = x.shape[1]
    pad = torch.cat([c, torch.zeros_like(c[:, :1])], 1)  # c at index T is 0
    ends = cu[1:].long()
    seq = torch.searchsorted(ends, torch.arange(T, device=x.device), right=True)
    end_of = ends.clamp(max=T)[seq.clamp(max=ends.numel() - 1)]
    return c - pad.index_select(1, end_of)


def _gate_grads(sig: CoreSig, t: dict, meta: dict, g: dict, dov, dht, ht) -> dict[str, torch.Tensor]:
    """d g / d gk / d gv of a factorable decay by reverse cumulative sums (module docstring)."""
    f32 = torch.float32
    cu = meta["cu_seqlens"]
    q, k, v = t["q"].to(f32), t["k"].to(f32), t["v"].to(f32)
    before = sig.readout is Readout.BEFORE
    terms = {}  # gate name -> (read-out term r, input term m, axes of S_T ⊙ dS_T to sum)
    if sig.decay is Decay.SCALAR:
        terms["g"] = ((q * g["q"]).sum(-1), (v * g["v"]).sum(-1), (-1, -2))
    if sig.decay in (Decay.KEY, Decay.OUTER):
        terms["gk"] = (q * g["q"], k * g["k"], (-1,))
    if sig.decay in (Decay.VALUE, Decay.OUTER):
        terms["gv"] = (dov, v * g["v"], (-2,))
    out = {}
    for name, (r, m, axes) in terms.items():
        d = _suffix_sum(r - m, cu)
        if before:
            d = d - r
        if dht is not None and ht is not None:
            end = (ht * dht).sum(axes)  # [N, H] or [N, H, K|V]
            if cu is None:
                d = d + end[:, None]
            else:
                T = d.shape[1]
                seq = torch.searchsorted(cu[1:].long(), torch.arange(T, device=d.device), right=True)
                d = d + end[seq.clamp(max=end.shape[0] - 1)][None]
        out[name] = d
    return out
