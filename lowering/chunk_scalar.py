"""Chunked (SSD) strategy for decay NONE and SCALAR: linear attention, retention, Mamba-2, mLSTM, ...

How it is parallelised: fused-chunk. The forward runs one program per (V-block, sequence, head);
each walks its sequence's chunks of ``C`` steps in order with its ``[K, BV]`` slice of the fp32
state in registers, doing per chunk the causal decayed intra-chunk product and the read of the
carried state on tensor cores. The backward runs two kernels side by side: per (K-block,
sequence, head) a forward sweep for ``dq`` then a reverse sweep for ``dk``, ``dg`` and the
initial-state gradient; per (V-block, sequence, head) a reverse sweep for ``dv``. Rows of the
state evolve independently under a scalar decay, which is what lets each program rebuild only
its own slice. The kernels and the algebra are in :mod:`scandsl.lowering.chunk_scalar_source`
(Mamba-2's SSD, Dao & Gu 2024; Yang et al. 2024, fused-chunk GLA).

Log-decays enter only as ``exp`` of within-chunk differences that are ``<= 0``, so long
sequences (T = 65536 and beyond) cannot overflow.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from scandsl.autotune._space import Param, SearchSpace
from scandsl.lowering._source import load_source
from scandsl.lowering.chunk_scalar_source import generate_source, module_name

from scandsl._core import CoreInputs, CoreSig, Decay, Shape, Transition

__all__ = ["supports", "run", "search_space", "default_config", "generate_source"]

# Tests flip this to NaN-fill every buffer the kernels are supposed to overwrite.
POISON_OUTPUTS = False


def supports(sig: CoreSig) -> str | None:
    if sig.decay not in (Decay.NONE, Decay.SCALAR):
        return f"chunk_scalar handles decay NONE or SCALAR, not {sig.decay.name}"
    if sig.transition is not Transition.IDENTITY:
        return "chunk_scalar handles the identity transition only (the delta rule is chunk_delta)"
    if sig.key_static or sig.query_static or sig.decay_static:
        return "chunk_scalar needs per-step q and k"
    return None


def _pow2(n: int) -> int:
    return max(16, 1 << (max(int(n), 1) - 1).bit_length())


def default_config(sig: CoreSig, shape: Shape) -> dict:
    """Heuristic tiles: the state slice each program carries stays near 64 fp32 registers a thread."""
    kp, vp = _pow2(shape.K), _pow2(shape.V)
    return {
        "chunk": 64 if max(kp, vp) <= 128 else 32,
        "block_v": min(vp, 64 if kp <= 128 else 32),
        "num_warps": 4,
        "num_stages": 2,
        "bwd_block_k": min(kp, 64 if vp <= 128 else 32),
        "bwd_block_v": min(vp, 64 if kp <= 128 else 32),
        "bwd_num_warps": 4,
        "bwd_num_stages": 2,
        "fp32_dot": "ieee",
    }


def _check_config(cfg: dict, shape: Shape) -> str | None:
    kp, vp = _pow2(shape.K), _pow2(shape.V)
    c = cfg["chunk"]
    for name, limit in (("block_v", vp), ("bwd_block_k", kp), ("bwd_block_v", vp)):
        if cfg[name] > limit:
            return f"{name}={cfg[name]} exceeds the padded feature size {limit}"
    threads = {"fwd": 32 * cfg["num_warps"], "bwd": 32 * cfg["bwd_num_warps"]}
    # fp32 registers a thread spends on the carried state and the [C, C] score tile
    tiles = {
        "fwd": (kp * cfg["block_v"] + c * c, threads["fwd"]),
        "bwd_k": (cfg["bwd_block_k"] * vp + c * c, threads["bwd"]),
        "bwd_v": (kp * cfg["bwd_block_v"] + c * c, threads["bwd"]),
    }
    for kernel, (elems, n) in tiles.items():
        if elems / n > 160:
            return f"{kernel}: state + score tiles need {elems // n} fp32 registers a thread (> 160)"
    # shared memory (16-bit): pipelined input tiles per stage, plus the state staged as a dot operand
    bk, bv, bvb = cfg["bwd_block_k"], cfg["block_v"], cfg["bwd_block_v"]
    smem = {
        "fwd": cfg["num_stages"] * c * (2 * kp + bv) * 2 + kp * bv * 2,
        "bwd_k": cfg["bwd_num_stages"] * c * (2 * bk + 2 * vp) * 2 + bk * vp * 2,
        "bwd_v": cfg["bwd_num_stages"] * c * (2 * kp + bvb) * 2 + kp * bvb * 2,
    }
    for kernel, nbytes in smem.items():
        if nbytes > 200 * 1024:
            return f"{kernel}: pipelined tiles need {nbytes // 1024} KiB of shared memory (> 200)"
    return None


def search_space(sig: CoreSig, shape: Shape) -> SearchSpace:
    blocks = (16, 32, 64, 128, 256)
    return SearchSpace(
        strategy="chunk",
        params=(
            Param("chunk", (64, 32, 128, 16)),
            Param("block_v", blocks),
            Param("num_warps", (4, 8, 2)),
            Param("num_stages", (2, 1, 3)),
            Param("bwd_block_k", blocks),
            Param("bwd_block_v", blocks),
            Param("bwd_num_warps", (4, 8, 2)),
            Param("bwd_num_stages", (2, 1, 3)),
            Param("fp32_dot", ("ieee",)),
        ),
        valid=lambda cfg: _check_config(cfg, shape),
    )


@functools.cache
def _kernels(sig: CoreSig, fp32_dot: str) -> ModuleType:
    source = generate_source(sig, {"fp32_dot": fp32_dot})
    return load_source(source, name=module_name(sig))


def _empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(*shape, dtype=dtype, device=device)
    if POISON_OUTPUTS and dtype.is_floating_point:
        out.fill_(float("nan"))
    return out


class _Plan:
    """Sizes and flags shared by the forward and backward launches of one call."""

    def __init__(self, sig: CoreSig, x: CoreInputs, cfg: dict):
        self.sig, self.cfg = sig, cfg
        self.B, self.T, self.H, self.K, self.V = x.B, x.T, x.H, x.K, x.V
        self.varlen = x.cu_seqlens is not None
        self.N = len(x.cu_seqlens) - 1 if self.varlen else self.B
        self.KP, self.VP = _pow2(self.K), _pow2(self.V)
        self.scale = float(x.scale)
        self.kernels = _kernels(sig, cfg.get("fp32_dot", "ieee"))


class _ChunkScalar(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan: _Plan, q, k, v, g, h0, cu_seqlens, output_final_state: bool, out_dtype):
        ctx.set_materialize_grads(False)
        cfg, P = plan.cfg, plan
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        g = g.contiguous() if g is not None else None
        h0c = h0.float().contiguous() if h0 is not None else None
        o = _empty(P.B, P.T, P.H, P.V, dtype=out_dtype, device=v.device)
        ht = _empty(P.N, P.H, P.K, P.V, dtype=torch.float32, device=v.device) if output_final_state else None
        bv = min(cfg["block_v"], P.VP)
        grid = (triton_cdiv(P.V, bv), P.N * P.H)
        P.kernels.chunk_scalar_fwd[grid](
            q, k, v, g if g is not None else q, o,
            h0c if h0c is not None else q, ht if ht is not None else q,
            cu_seqlens if cu_seqlens is not None else q,
            P.scale, P.T,
            H=P.H, K=P.K, V=P.V, C=cfg["chunk"], BK=P.KP, BV=bv,
            IS_VARLEN=P.varlen, HAS_H0=h0c is not None, STORE_HT=ht is not None,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip
        ctx.plan = plan
        ctx.h0_dtype = h0.dtype if h0 is not None else None
        ctx.save_for_backward(q, k, v, g, h0c, cu_seqlens)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        P = ctx.plan
        cfg = P.cfg
        q, k, v, g, h0, cu_seqlens = ctx.saved_tensors
        dev = v.device
        if do is None:
            do = torch.zeros(P.B, P.T, P.H, P.V, dtype=v.dtype, device=dev)
        do = do.to(v.dtype).contiguous()
        dht = dht.float().contiguous() if dht is not None else None
        scalar = P.sig.decay is Decay.SCALAR
        bk = min(cfg["bwd_block_k"], P.KP)
        bv = min(cfg["bwd_block_v"], P.VP)
        nk = triton_cdiv(P.K, bk)
        dq = _empty(*q.shape, dtype=q.dtype, device=dev)
        dk = _empty(*k.shape, dtype=k.dtype, device=dev)
        dv = _empty(*v.shape, dtype=v.dtype, device=dev)
        nth = P.B * P.T * P.H
        dgp = _empty(nk, nth, dtype=torch.float32, device=dev) if scalar else None
        dh0 = _empty(P.N, P.H, P.K, P.V, dtype=torch.float32, device=dev) if h0 is not None else None
        dummy = q
        common = dict(
            H=P.H, K=P.K, V=P.V, C=cfg["chunk"], IS_VARLEN=P.varlen, HAS_DHT=dht is not None,
            num_warps=cfg["bwd_num_warps"], num_stages=cfg["bwd_num_stages"],
        )  # fmt: skip
        cu = cu_seqlens if cu_seqlens is not None else dummy
        P.kernels.chunk_scalar_bwd_k[(nk, P.N * P.H)](
            q, k, v, g if g is not None else dummy, do, dq, dk, dgp if dgp is not None else dummy,
            h0 if h0 is not None else dummy, dht if dht is not None else dummy,
            dh0 if dh0 is not None else dummy, cu, P.scale, P.T, nth,
            BK=bk, BV=P.VP, HAS_H0=h0 is not None, STORE_DH0=dh0 is not None, **common,
        )  # fmt: skip
        P.kernels.chunk_scalar_bwd_v[(triton_cdiv(P.V, bv), P.N * P.H)](
            q, k, g if g is not None else dummy, do, dv, dht if dht is not None else dummy,
            cu, P.scale, P.T, BK=P.KP, BV=bv, **common,
        )  # fmt: skip
        dg = None
        if scalar:
            dg = (dgp[0] if nk == 1 else dgp.sum(0)).view(P.B, P.T, P.H).to(g.dtype)
        if dh0 is not None:
            dh0 = dh0.to(ctx.h0_dtype)
        return None, dq, dk, dv, dg, dh0, None, None, None


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _validate(sig: CoreSig, x: CoreInputs) -> None:
    reason = supports(sig)
    if reason is not None:
        raise ValueError(reason)
    if sig.decay is Decay.SCALAR and x.g is None:
        raise ValueError("CoreInputs.g: decay SCALAR needs g [B, T, H], got None")
    if x.K > 256 or x.V > 256:
        raise ValueError(f"chunk_scalar: K and V must be <= 256, got K={x.K}, V={x.V}")
    if x.cu_seqlens is not None and x.B != 1:
        raise ValueError(f"CoreInputs.cu_seqlens: varlen needs B == 1, got B={x.B}")


def run(sig: CoreSig, x: CoreInputs, config: dict | None = None):
    """``(o, final_state)`` for one core recurrence; differentiable in q, k, v, g, initial_state."""
    _validate(sig, x)
    shape = Shape(x.B, x.T, x.H, x.K, x.V)
    cfg = {**default_config(sig, shape), **(config or {})}
    kp, vp = _pow2(x.K), _pow2(x.V)
    # a block wider than the padded feature size is the same launch as the full width
    cfg.update(block_v=min(cfg["block_v"], vp), bwd_block_k=min(cfg["bwd_block_k"], kp))
    cfg.update(bwd_block_v=min(cfg["bwd_block_v"], vp))
    reason = _check_config(cfg, shape)
    if reason is not None and config is not None:
        raise ValueError(f"chunk_scalar config {config}: {reason}")
    plan = _Plan(sig, x, cfg)
    g = x.g if sig.decay is Decay.SCALAR else None
    out_dtype = x.out_dtype or x.v.dtype
    o, ht = _ChunkScalar.apply(
        plan, x.q, x.k, x.v, g, x.initial_state, x.cu_seqlens, bool(x.output_final_state), out_dtype
    )
    return o, (ht if x.output_final_state else None)
