"""Chunked delta rule (DeltaNet, Gated DeltaNet): ``Transition.DELTA`` with decay NONE or SCALAR.

How it is parallelised: time is cut into chunks of ``C`` steps that never cross a sequence
boundary (``cu_seqlens`` varlen: each sequence's chunks start at its own first step). Work that
needs no state runs with one program per (chunk, head): the UT transform of every chunk
(``delta_prepare``), the read-out (``delta_fwd_out``, also per V-block) and the gradients
(``delta_bwd_chunk``). Only the state hand-off is sequential: one program per (V-block,
sequence, head) walks its chunks carrying a ``[K, BV]`` slice of the fp32 state in registers,
forwards (``delta_fwd_state``) and backwards for the state gradient (``delta_bwd_state``);
columns of the state never mix under the delta rule, so V-blocks are independent.

Algorithm: the WY / UT representation of Yang et al., "Parallelizing Linear Transformers with the
Delta Rule over Sequence Length" (2024), with Gated DeltaNet's scalar decay (Yang, Kautz &
Hatamizadeh, 2024); the equations, forward and backward, are in
:mod:`scandsl.lowering.chunk_delta_source`, which generates the Triton text from the signature.
``python -m scandsl.lowering.chunk_delta --write-golden`` rewrites the checked-in copies in
``lowering/golden/chunk_delta_*.py``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from scandsl.autotune._space import Param, SearchSpace
from scandsl.lowering._partials import sum_partials
from scandsl.lowering._source import load_source
from scandsl.lowering._tiles import dot_pad as _pow2
from scandsl.lowering.chunk_delta_source import generate_source

from scandsl._core import CoreInputs, CoreSig, Decay, Readout, Shape, Transition
from scandsl._seqlens import derived, host_bounds

__all__ = ["supports", "run", "search_space", "default_config", "generate_source"]

# Tests turn this on: every buffer a kernel is meant to fill starts as NaN.
POISON = False
_SMEM_BYTES = 227 * 1024  # Hopper's per-block shared memory
_DUMMY: dict = {}  # device -> an int32 placeholder for the varlen tables of fixed-length calls


def supports(sig: CoreSig) -> str | None:
    if sig.transition is not Transition.DELTA:
        return "chunk_delta runs the delta-rule transition only"
    if sig.decay not in (Decay.NONE, Decay.SCALAR):
        return f"the chunked delta rule takes decay NONE or SCALAR, not {sig.decay.name}"
    if sig.readout is not Readout.AFTER:
        return "the chunked delta rule reads the state after the update (Readout.AFTER) only"
    if sig.key_static or sig.query_static or sig.decay_static:
        return "static (per-channel) keys, queries or decays have no chunked delta-rule form"
    return None


def _sm90_fault(cfg: dict) -> str | None:
    """Configs Triton 3.6 builds into an illegal memory access on sm_90: found by ``scandsl tune
    deltanet --objective fwd_bwd`` on the H100 (2026-11-24 00:46 UTC), reproduced each in its own
    process at the tuner's probe shape and at B=4 T=4096 H=16 K=V=128, forward + backward
    (``bench/gpu_fault_repro.py --family delta``): it faults with 4 or 8 per-chunk and backward
    warps and out_bv 32 or 64; it runs (finite) with num_stages=2, bv=64 or state_warps=8. bv=16
    was not run and is rejected with bv=32."""
    stages = {cfg["num_stages"], _state_stages(cfg)}  # which kernel faulted is not known: both count
    if cfg["chunk"] == 64 and cfg["bv"] <= 32 and cfg["state_warps"] == 4 and 1 in stages:
        return "chunk=64, bv<=32, state_warps=4, num_stages=1: an illegal memory access on sm_90 (Triton 3.6)"
    return None


def _state_stages(cfg: dict) -> int:
    """Pipeline stages of the sequential passes (``state_stages``, else ``num_stages``)."""
    return cfg.get("state_stages") or cfg["num_stages"]


def search_space(sig: CoreSig, shape: Shape) -> SearchSpace:
    """Tiles: ``chunk``; ``bv`` the V-block of the sequential passes (more programs walk the
    sequences as it shrinks); ``out_bv`` the V-block of the per-chunk kernels; ``bwd_bk`` the
    K-block of ``delta_bwd_chunk``; warps of the per-chunk kernels (``num_warps``), of the
    sequential passes (``state_warps``) and of ``delta_bwd_chunk`` (``bwd_warps``); stages.

    ``prepare_warps`` and ``state_stages``: ``delta_prepare``'s warps and the sequential passes'
    stages (``None`` in a config: ``num_warps`` / ``num_stages``).

    Outside the grid (config keys with defaults, see :func:`default_config`), none of them
    faster on the H100 at K = V = 128 (docs/performance.md): ``out_bk`` (the K-slice
    ``delta_fwd_out`` walks, else all of K), ``prepare_wu`` (``"blocks"``: w and u' from T's 16x16
    blocks in registers; ``"full"``: as [C, C] products, T through memory in the same kernel;
    ``"split"``: the same products in their own kernel ``delta_wu``) and ``operand_dtype``."""
    bk_max, bv_max = _pow2(shape.K), _pow2(shape.V)

    def valid(cfg) -> str | None:
        fault = _sm90_fault(cfg)
        if fault is not None:
            return fault
        c = cfg["chunk"]
        for key, top in (("bv", bv_max), ("out_bv", bv_max), ("bwd_bk", bk_max)):
            if cfg[key] > top:
                return f"{key}={cfg[key]} is wider than its padded size {top}"
        # delta_bwd_chunk keeps three [C, bwd_bk] fp32 accumulators in registers
        if 3 * c * cfg["bwd_bk"] > 96 * 32 * cfg["bwd_warps"]:
            return f"chunk={c}, bwd_bk={cfg['bwd_bk']} spill delta_bwd_chunk at {cfg['bwd_warps']} warps"
        # delta_bwd_state: [C, K] q, k, w tiles per stage plus the [K, bv] state
        smem = (3 * c * bk_max + c * cfg["bv"]) * 2 * _state_stages(cfg) + bk_max * cfg["bv"] * 2
        if smem > _SMEM_BYTES:
            return f"delta_bwd_state needs ~{smem // 1024} KiB of shared memory"
        return None

    return SearchSpace(
        strategy="chunk",
        params=(
            Param("chunk", (64, 32, 16)),
            Param("bv", (32, 64, 16, 128)),
            Param("out_bv", (64, 32, 128)),
            Param("bwd_bk", (64, 32, 128)),
            Param("num_warps", (4, 8)),
            Param("state_warps", (8, 4)),
            Param("num_stages", (2, 1, 3)),
            Param("bwd_warps", (8, 4)),
            Param("prepare_warps", (2, 4, 1)),
            Param("state_stages", (3, 2)),
        ),
        valid=valid,
    )


def default_config(sig: CoreSig, shape: Shape) -> dict:
    """Tiles timed on the H100 (Triton 3.6) at K = V = 128 for K in (64, 128] and V >= 64
    (bench/results/gpu_ab_delta_run2_*.json, 2026-11-24): the sequential passes at 4 warps, bv 64,
    3 stages, ``delta_prepare`` at 2 warps. Other shapes keep the earlier tiles, which were never
    beaten there on a GPU (and bv 32 at 4 warps is next to the sm_90 fault)."""
    timed = _pow2(shape.K) == 128 and shape.V >= 64
    return {
        "chunk": 64 if shape.K <= 128 else 32,
        "bv": min(64 if timed else 32, _pow2(shape.V)),
        "out_bv": min(64, _pow2(shape.V)),
        "bwd_bk": min(64, _pow2(shape.K)),
        "num_warps": 4,
        "state_warps": 4 if timed else 8,
        "num_stages": 2,
        "bwd_warps": 8,
        "operand_dtype": "v",
        "prepare_wu": "blocks",
        "prepare_warps": 2 if timed else None,  # None: num_warps
        "state_stages": 3 if timed else None,  # None: num_stages
        "out_bk": None,  # None: all of K at once
    }


def _operand_dtype(cfg: dict, x: CoreInputs) -> torch.dtype:
    """dtype of the tensor-core operands: ``"v"`` takes the values' dtype (q and k are cast to it),
    ``"qk"`` the features' (``promote(q, k)``). They differ when an fp32 factor is folded into
    ``v`` before the core — since value gates, DeltaNet's ``β v`` reaches it as ``v`` and ``vg``,
    so only a core call made without one (a user's ``CoreInputs``): there ``"v"`` runs every
    product in fp32 (tf32x3), ``"qk"`` in bf16 as the inputs were (v is rounded to bf16 as it is
    loaded; the output keeps its dtype)."""
    choice = cfg.get("operand_dtype", "v")
    if choice == "v":
        return x.v.dtype
    if choice == "qk":
        return torch.promote_types(x.q.dtype, x.k.dtype)
    raise ValueError(f"chunk_delta config 'operand_dtype': 'v' or 'qk', got {choice!r}")


def _module(cfg: dict, sig: CoreSig, dtype: torch.dtype):
    return _module_of(
        sig, cfg["chunk"], cfg.get("fp32_precision", "tf32x3"), cfg.get("prepare_wu", "blocks"), dtype
    )


@functools.lru_cache(maxsize=64)
def _module_of(sig: CoreSig, chunk: int, precision: str, wu: str, dtype: torch.dtype):
    src = generate_source(sig, {"chunk": chunk, "fp32_precision": precision, "prepare_wu": wu}, dtype=dtype)
    return load_source(src, name=f"chunk_delta_{sig.decay.value}_c{chunk}_{wu}_{str(dtype)[6:]}")


def _empty(*shape: int, dtype: torch.dtype, device, zero: bool = False) -> torch.Tensor:
    if zero:
        return torch.zeros(*shape, dtype=dtype, device=device)
    t = torch.empty(*shape, dtype=dtype, device=device)
    return t.fill_(float("nan")) if POISON and t.is_floating_point() else t


@dataclass(frozen=True)
class _Plan:
    """Everything about a call that is not a tensor to differentiate."""

    sig: CoreSig
    cfg: tuple
    scale: float
    N: int  # sequences
    T: int  # steps per sequence (non-varlen)
    NT: int  # chunks per sequence (non-varlen)
    NC: int  # chunks in all
    varlen: bool
    covers_all: bool  # every row belongs to some sequence (else untouched rows must be zero)
    out_dtype: torch.dtype
    output_final_state: bool
    need_grad: bool

    @property
    def config(self) -> dict:
        return dict(self.cfg)


def _tables(cu: torch.Tensor | None, B: int, T: int, C: int, device):
    """(chunk_offsets [N+1], chunk_seq [NC], chunk_start [NC]) on the device, or dummies."""
    if cu is None:
        dummy = _DUMMY.get(device)
        if dummy is None:
            dummy = _DUMMY[device] = torch.zeros(1, dtype=torch.int32, device=device)
        return dummy, dummy, dummy, B * math.ceil(T / C)
    return derived(cu, ("delta_tables", C, device), lambda: _varlen_tables(cu, C, device))


def _varlen_tables(cu: torch.Tensor, C: int, device):
    bounds = host_bounds(cu)  # one host sync per cu_seqlens tensor
    counts = [math.ceil((e - s) / C) for s, e in zip(bounds[:-1], bounds[1:])]
    offsets = [0]
    seq, start = [], []
    for n, (s, cnt) in enumerate(zip(bounds[:-1], counts)):
        offsets.append(offsets[-1] + cnt)
        seq += [n] * cnt
        start += [s + i * C for i in range(cnt)]
    mk = lambda xs: torch.tensor(xs or [0], dtype=torch.int32, device=device)
    return mk(offsets), mk(seq), mk(start), offsets[-1]


class _ChunkDelta(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, g, h0, cu, tables, plan: _Plan, vg=None):
        B, Tn, H, K = q.shape
        V = v.shape[-1]
        cfg, C = plan.config, plan.config["chunk"]
        dev = q.device
        mod = _module(cfg, plan.sig, q.dtype)
        q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
        gate = dict(VALUE_GATE=vg is not None)
        vg = vg.contiguous() if vg is not None else beta  # a placeholder pointer when ungated
        g = g.contiguous() if g is not None else beta
        offsets, cseq, cstart = tables
        cu_arg = cu if cu is not None else offsets
        launch = dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        walk = dict(num_warps=cfg["state_warps"], num_stages=_state_stages(cfg))
        shapes = dict(H=H, K=K, V=V, C=C, BK=_pow2(K), IS_VARLEN=plan.varlen)
        wu = cfg.get("prepare_wu", "blocks")
        seq_bv, par_bv = min(cfg["bv"], _pow2(V)), min(cfg["out_bv"], _pow2(V))
        w = _empty(B, Tn, H, K, dtype=k.dtype, device=dev)
        u = _empty(B, Tn, H, V, dtype=k.dtype, device=dev)  # the new values, operands of later products
        # T only feeds tensor-core products in the input dtype, so it is kept in that dtype;
        # prepare_wu "full" and "split" pass it through memory in the forward too
        keep_t = plan.need_grad or wu != "blocks"
        tmat = _empty(B, Tn, H, C, dtype=k.dtype, device=dev) if keep_t else w
        hs = _empty(max(plan.NC, 1), H, K, V, dtype=k.dtype, device=dev)
        ht = _empty(plan.N, H, K, V, dtype=torch.float32, device=dev)
        o = _empty(B, Tn, H, V, dtype=plan.out_dtype, device=dev, zero=not plan.covers_all)
        if plan.NC:
            prep_warps = cfg.get("prepare_warps") or cfg["num_warps"]
            mod.delta_prepare[(plan.NC, H)](
                k, v, vg, beta, g, w, u, tmat, cu_arg, cseq, cstart, plan.T, plan.NT,
                STORE_T=plan.need_grad, BV=par_bv, **shapes, **gate, num_warps=prep_warps,
                num_stages=cfg["num_stages"],
            )  # fmt: skip
            if wu == "split":
                mod.delta_wu[(plan.NC, H)](
                    k, v, vg, beta, g, w, u, tmat, cu_arg, cseq, cstart, plan.T, plan.NT, BV=par_bv, **shapes,
                    **gate, **launch,
                )  # fmt: skip
        mod.delta_fwd_state[(triton_cdiv(V, seq_bv), plan.N * H)](
            k, w, u, g, h0 if h0 is not None else ht, hs, ht, cu_arg, offsets, plan.T, plan.NT,
            USE_H0=h0 is not None, STORE_HT=plan.output_final_state, BV=seq_bv, **shapes, **walk,
        )  # fmt: skip
        if plan.NC:
            nv = triton_cdiv(V, par_bv)
            mod.delta_fwd_out[(plan.NC * nv, H)](
                q, k, u, g, hs, o, cu_arg, cseq, cstart, plan.scale, plan.T, plan.NT,
                BV=par_bv, NV=nv, BKO=min(cfg.get("out_bk") or _pow2(K), _pow2(K)), **shapes, **launch,
            )  # fmt: skip
        gated = gate["VALUE_GATE"]
        ctx.save_for_backward(
            q, k, beta, g, h0, w, u, tmat, hs, cu, v if gated else None, vg if gated else None, *tables
        )
        ctx.plan = plan
        ctx.has_g = plan.sig.decay is Decay.SCALAR
        ctx.v_dtype = v.dtype
        return o, (ht if plan.output_final_state else None)

    @staticmethod
    def backward(ctx, do, dht):
        q, k, beta, g, h0, w, u, tmat, hs, cu, v, vg, offsets, cseq, cstart = ctx.saved_tensors
        plan = ctx.plan
        cfg, C = plan.config, plan.config["chunk"]
        B, Tn, H, K = q.shape
        V = u.shape[-1]
        dev = q.device
        mod = _module(cfg, plan.sig, q.dtype)
        cu_arg = cu if cu is not None else offsets
        walk = dict(num_warps=cfg["state_warps"], num_stages=_state_stages(cfg))
        shapes = dict(H=H, K=K, V=V, C=C, IS_VARLEN=plan.varlen)
        seq_bv, par_bv = min(cfg["bv"], _pow2(V)), min(cfg["out_bv"], _pow2(V))
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        want_dh0 = h0 is not None and ctx.needs_input_grad[5]
        du = _empty(B, Tn, H, V, dtype=u.dtype, device=dev)
        dhs = _empty(max(plan.NC, 1), H, K, V, dtype=hs.dtype, device=dev)
        dh0 = _empty(plan.N, H, K, V, dtype=torch.float32, device=dev) if want_dh0 else None
        mod.delta_bwd_state[(triton_cdiv(V, seq_bv), plan.N * H)](
            q, k, w, g, do, du, dhs, dht if dht is not None else hs, dh0 if want_dh0 else hs,
            cu_arg, offsets, plan.scale, plan.T, plan.NT,
            USE_DHT=dht is not None, STORE_DH0=want_dh0, BK=_pow2(K), BV=seq_bv, **shapes, **walk,
        )  # fmt: skip
        zero = not plan.covers_all
        dq = _empty(B, Tn, H, K, dtype=q.dtype, device=dev, zero=zero)
        dk = _empty(B, Tn, H, K, dtype=k.dtype, device=dev, zero=zero)
        dv = _empty(B, Tn, H, V, dtype=ctx.v_dtype, device=dev, zero=zero)
        gated = vg is not None
        dvg = _empty(B, Tn, H, dtype=torch.float32, device=dev, zero=zero) if gated else None
        bwd_bk = min(cfg["bwd_bk"], _pow2(K))
        nk = triton_cdiv(K, bwd_bk)
        # per-K-block partial sums of dbeta and dg, added up below
        dbeta = _empty(nk, B, Tn, H, dtype=torch.float32, device=dev, zero=zero)
        dg = _empty(nk, B, Tn, H, dtype=torch.float32, device=dev, zero=zero) if ctx.has_g else dbeta
        if plan.NC:
            mod.delta_bwd_chunk[(plan.NC * nk, H)](
                q, k, v if gated else u, vg if gated else beta, beta, g, tmat, hs, dhs, u, du, do, dq, dk, dv,
                dvg if gated else dbeta, dbeta, dg, cu_arg, cseq, cstart, plan.scale, plan.T, plan.NT, B * Tn * H,
                BK=bwd_bk, BV=par_bv, NK=nk, VALUE_GATE=gated, **shapes, num_warps=cfg["bwd_warps"],
                num_stages=cfg["num_stages"],
            )  # fmt: skip
        dbeta = sum_partials(dbeta, beta.dtype)
        dg = sum_partials(dg, g.dtype) if ctx.has_g else None
        dvg = dvg.to(vg.dtype) if gated and ctx.needs_input_grad[9] else None
        return dq, dk, dv, dbeta, dg, dh0, None, None, None, dvg


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def run(sig: CoreSig, x: CoreInputs, config: dict | None = None):
    """``(o, final_state)`` of the core recurrence; differentiable in q, k, v, beta, g, initial_state."""
    reason = supports(sig)
    if reason is not None:
        raise NotImplementedError(reason)
    if x.beta is None:
        raise ValueError("CoreInputs.beta: the delta rule needs beta [B, T, H], got None")
    if sig.decay is Decay.SCALAR and x.g is None:
        raise ValueError("CoreInputs.g: decay SCALAR needs g [B, T, H], got None")
    B, T, H, K, V = x.B, x.T, x.H, x.K, x.V
    if K > 256 or V > 256:
        raise ValueError(f"chunk_delta: K and V up to 256, got K={K}, V={V}")
    cfg = default_config(sig, Shape(B, T, H, K, V)) | dict(config or {})
    fault = _sm90_fault(cfg)
    if fault is not None:
        raise ValueError(f"chunk_delta config {config}: {fault}")
    user_cu = cu = x.cu_seqlens
    if cu is not None:
        if B != 1:
            raise ValueError(f"CoreInputs.cu_seqlens: varlen needs B == 1, got B={B}")
        cu = cu.to(device=x.v.device, dtype=torch.int32)
    N = B if cu is None else len(cu) - 1
    h0 = x.initial_state
    if h0 is not None and tuple(h0.shape) != (N, H, K, V):
        raise ValueError(f"CoreInputs.initial_state: expected {(N, H, K, V)}, got {tuple(h0.shape)}")
    # host-side tables from the caller's tensor (memoised per tensor), not from the int32 copy
    offsets, cseq, cstart, nc = _tables(user_cu, B, T, cfg["chunk"], x.v.device)
    if x.vg is not None and x.vg.shape != x.v.shape[:3]:
        raise ValueError(
            f"CoreInputs.vg: chunk_delta takes a per-step scalar [B, T, H], got {tuple(x.vg.shape)}"
        )
    tensors = [x.q, x.k, x.v, x.beta, x.g, h0, x.vg]
    need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    dtype = _operand_dtype(cfg, x)
    plan = _Plan(
        sig=sig,
        cfg=tuple(sorted(cfg.items())),
        scale=float(x.scale),
        N=N,
        T=T,
        NT=triton_cdiv(T, cfg["chunk"]),
        NC=nc,
        varlen=cu is not None,
        covers_all=user_cu is None or host_bounds(user_cu)[-1] == T,
        out_dtype=x.out_dtype or x.v.dtype,
        output_final_state=x.output_final_state,
        need_grad=need_grad,
    )
    q, k = x.q.to(dtype), x.k.to(dtype)
    g = x.g if sig.decay is Decay.SCALAR else None
    h0 = h0.float() if h0 is not None else None
    return _ChunkDelta.apply(q, k, x.v, x.beta, g, h0, cu, (offsets, cseq, cstart), plan, x.vg)


def value_gates(sig: CoreSig) -> tuple[str, ...]:
    """The value as ``v ⊙ vg`` with ``vg [B,T,H]`` (DeltaNet's ``β v``, scandsl._core): the UT
    transform multiplies it as it loads ``v``, and the backward returns both factors' gradients."""
    return ("scalar",)


# Checked-in copies of generated kernels (lowering/golden/): a codegen change shows in the diff.
GOLDEN: dict[str, tuple[CoreSig, dict, torch.dtype]] = {
    "chunk_delta_none_c32_bf16": (CoreSig(transition=Transition.DELTA), {"chunk": 32}, torch.bfloat16),
    "chunk_delta_scalar_c32_bf16": (
        CoreSig(decay=Decay.SCALAR, transition=Transition.DELTA),
        {"chunk": 32},
        torch.bfloat16,
    ),
}


GOLDEN_DIR = Path(__file__).parent / "golden"


def _write_golden() -> None:
    out = GOLDEN_DIR
    out.mkdir(exist_ok=True)
    for name, (sig, cfg, dtype) in GOLDEN.items():
        (out / f"{name}.py").write_text(generate_source(sig, cfg, dtype=dtype))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m scandsl.lowering.chunk_delta")
    ap.add_argument("--write-golden", action="store_true", help="rewrite lowering/golden/chunk_delta_*.py")
    if ap.parse_args().write_golden:
        _write_golden()
