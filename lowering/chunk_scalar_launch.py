"""Launches of the chunked scalar-decay kernels on plain tensors (no autograd).

``chunk_scalar`` wraps these in a ``torch.autograd.Function``; the GPU check times them directly.
Optional pointers (``g``, states, ``cu_seqlens``) are replaced by a dummy tensor when absent:
the matching constexpr flag keeps the kernel from reading it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType

import torch
from scandsl.lowering._source import load_source
from scandsl.lowering._tiles import cdiv
from scandsl.lowering._tiles import dot_pad as pow2
from scandsl.lowering.chunk_scalar_source import generate_source, module_name

from scandsl._core import CoreSig, Decay

__all__ = [
    "Plan",
    "pow2",
    "cdiv",
    "fwd_meta",
    "bwd_meta",
    "bwd_launches",
    "launch_fwd",
    "launch_bwd",
    "POISON",
]

# Tests set POISON["enabled"] to NaN-fill every buffer the kernels are supposed to overwrite.
POISON = {"enabled": False}


@functools.cache
def kernels(sig: CoreSig, fp32_dot: str) -> ModuleType:
    return load_source(generate_source(sig, {"fp32_dot": fp32_dot}), name=module_name(sig))


def empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(*shape, dtype=dtype, device=device)
    if POISON["enabled"] and dtype.is_floating_point:
        out.fill_(float("nan"))
    return out


@dataclass(frozen=True)
class Plan:
    """Sizes, flags and tiles of one call, shared by its forward and backward launches."""

    sig: CoreSig
    cfg: dict
    B: int
    T: int
    H: int
    K: int
    V: int
    N: int  # independent sequences: B, or len(cu_seqlens) - 1
    varlen: bool
    scale: float

    @property
    def KP(self) -> int:
        return pow2(self.K)

    @property
    def VP(self) -> int:
        return pow2(self.V)

    @property
    def kernels(self) -> ModuleType:
        """The module whose forward runs: fp32 products at ``cfg["fp32_dot"]``."""
        return kernels(self.sig, self.cfg.get("fp32_dot", "ieee"))

    @property
    def bwd_kernels(self) -> ModuleType:
        """The module whose backward runs: ``cfg["bwd_fp32_dot"]``, else as the forward."""
        return kernels(self.sig, self.cfg.get("bwd_fp32_dot", self.cfg.get("fp32_dot", "ieee")))


def fwd_meta(P: Plan, *, has_h0: bool, store_ht: bool) -> tuple[tuple[int, int], dict]:
    """Grid and constexpr/launch keywords of the forward kernel (shared with ahead-of-time checks)."""
    cfg = P.cfg
    bv = min(cfg["block_v"], P.VP)
    meta = dict(
        K=P.K, V=P.V, C=cfg["chunk"], BK=P.KP, BV=bv,
        IS_VARLEN=P.varlen, HAS_H0=has_h0, STORE_HT=store_ht,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return (cdiv(P.V, bv), P.N * P.H), meta


def bwd_meta(P: Plan, roles: tuple[str, ...], *, has_h0: bool, has_dht: bool) -> tuple[tuple[int, int], dict]:
    """Grid and constexpr/launch keywords of one backward launch holding ``roles``."""
    cfg = P.cfg
    bk, bv = min(cfg["bwd_block_k"], P.KP), min(cfg["bwd_block_v"], P.VP)
    nk, nv = cdiv(P.K, bk), cdiv(P.V, bv)
    blocks = {"dq": nk, "dk": nk, "dv": nv}
    meta = dict(
        K=P.K, V=P.V, C=cfg["bwd_chunk"], BK=bk, BV=bv, KP=P.KP, VP=P.VP, NK=nk,
        DO_DQ="dq" in roles, DO_DK="dk" in roles, DO_DV="dv" in roles,
        IS_VARLEN=P.varlen, HAS_H0=has_h0, HAS_DHT=has_dht, STORE_DH0=has_h0,
        num_warps=cfg["bwd_num_warps"], num_stages=cfg["bwd_num_stages"],
    )  # fmt: skip
    return (sum(blocks[r] for r in roles), P.N * P.H), meta


def bwd_launches(P: Plan) -> list[tuple[str, ...]]:
    return [("dq", "dk", "dv")] if P.cfg["bwd_fused"] else [("dq",), ("dk",), ("dv",)]


def launch_fwd(P: Plan, q, k, v, g, h0, cu_seqlens, out_dtype, output_final_state: bool):
    """``(o, final_state or None)``; inputs contiguous ``[B, T, H, *]``, ``h0`` fp32 or None."""
    o = empty(P.B, P.T, P.H, P.V, dtype=out_dtype, device=v.device)
    ht = empty(P.N, P.H, P.K, P.V, dtype=torch.float32, device=v.device) if output_final_state else None
    grid, meta = fwd_meta(P, has_h0=h0 is not None, store_ht=ht is not None)
    P.kernels.chunk_scalar_fwd[grid](
        q, k, v, q if g is None else g, o, q if h0 is None else h0, q if ht is None else ht,
        q if cu_seqlens is None else cu_seqlens, P.scale, P.T, P.H, **meta,
    )  # fmt: skip
    return o, ht


def launch_bwd(P: Plan, q, k, v, g, o, h0, ht, cu_seqlens, do, dht, roles: tuple[str, ...] | None = None):
    """``(dq, dk, dv, dg or None, dh0 or None)`` with ``dg``/``dh0`` in fp32.

    ``o`` (the forward output) is read for SCALAR (``q.dq = o.do`` in dg); ``ht`` (the final state)
    when ``dht`` is given. ``roles`` (for timing): a subset of ``("dq", "dk", "dv")`` to launch
    together; by default all three in one launch, or one launch each with ``cfg["bwd_fused"]`` off.
    ``dg`` sums partial rows of the dk and dv programs: it is only meaningful when both ran.
    """
    dev = v.device
    nk = cdiv(P.K, min(P.cfg["bwd_block_k"], P.KP))
    nv = cdiv(P.V, min(P.cfg["bwd_block_v"], P.VP))
    scalar = P.sig.decay is Decay.SCALAR
    nth = P.B * P.T * P.H
    dq = empty(*q.shape, dtype=q.dtype, device=dev)
    dk = empty(*k.shape, dtype=k.dtype, device=dev)
    dv = empty(*v.shape, dtype=v.dtype, device=dev)
    # dg partials: one row per K-block of the dk programs, then one per V-block of the dv programs
    dgp = empty(nk + nv, nth, dtype=torch.float32, device=dev) if scalar else None
    dh0 = empty(P.N, P.H, P.K, P.V, dtype=torch.float32, device=dev) if h0 is not None else None
    args = [q, k, v, g, o, do, dq, dk, dv, dgp, h0, ht, dht, dh0, cu_seqlens]
    args = [q if a is None else a for a in args] + [P.scale, P.T, nth, P.H]
    for launch in bwd_launches(P) if roles is None else [roles]:
        grid, meta = bwd_meta(P, launch, has_h0=h0 is not None, has_dht=dht is not None)
        P.bwd_kernels.chunk_scalar_bwd[grid](*args, **meta)
    dg = None if dgp is None else dgp.sum(0).view(P.B, P.T, P.H)
    return dq, dk, dv, dg, dh0
