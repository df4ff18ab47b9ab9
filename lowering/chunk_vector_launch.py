"""Launches of the chunked vector-decay kernels: buffers and one function per kernel.

Each function takes a :class:`Plan` (sizes, chunk map, config) and tensors, allocates what the
kernel writes and launches it; :mod:`scandsl.lowering.chunk_vector` chains them into the
forward and backward, and ``bench/gpu_check_chunk_vector.py`` times them one by one.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from scandsl.lowering._chunks import chunk_map
from scandsl.lowering._source import load_source
from scandsl.lowering._tiles import cdiv
from scandsl.lowering._tiles import dot_pad as pow2
from scandsl.lowering.chunk_vector_slots import generate_source, module_name

from scandsl._core import CoreInputs, CoreSig, Decay, Readout

__all__ = [
    "Plan",
    "cumsum",
    "fused_cumsum",
    "fwd_state",
    "fwd_o",
    "bwd_state",
    "bwd_dv",
    "bwd_dqk",
    "bwd_dqk_shared",
    "bwd_dqk_split",
    "fwd_o_split",
    "bwd_dv_split",
]

# Tests flip this (through chunk_vector.POISON_OUTPUTS) to NaN-fill every buffer a kernel must overwrite.
POISON = {"on": False}


@functools.cache
def kernels(sig: CoreSig) -> ModuleType:
    return load_source(generate_source(sig), name=module_name(sig))


def empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(*shape, dtype=dtype, device=device)
    if POISON["on"] and dtype.is_floating_point:
        out.fill_(float("nan"))
    return out


class Plan:
    """Sizes, chunk map and config shared by the forward and backward launches of one call.

    Sequences are ``[bos, eos)`` ranges of the flattened ``[B*T, H, D]`` tensors (a fixed-length
    batch is B sequences of length T). Chunk ``i_c`` of a launch grid belongs to sequence
    ``chunk_seq[i_c]`` at position ``chunk_loc[i_c]`` (:mod:`scandsl.lowering._chunks`); its
    starting state lives in slot ``i_c + chunk_seq[i_c]`` of ``hs``: each sequence owns ``nc + 1``
    consecutive slots, the last one holding its final state.
    """

    def __init__(self, sig: CoreSig, x: CoreInputs, cfg: dict):
        self.sig, self.cfg = sig, cfg
        self.B, self.T, self.H, self.K, self.V = x.B, x.T, x.H, x.K, x.V
        self.scale = float(x.scale)
        self.key = sig.decay in (Decay.KEY, Decay.OUTER)
        self.value = sig.decay in (Decay.VALUE, Decay.OUTER)
        self.cu, self.chunk_seq, self.chunk_loc, self.chunk_off = chunk_map(
            x.cu_seqlens, self.B, self.T, cfg["chunk"], x.v.device
        )
        self.N = self.cu.numel() - 1
        self.TC = self.chunk_seq.numel()
        self.slots = self.TC + self.N
        if self.TC > 65535:
            raise ValueError(f"chunk_vector: {self.TC} chunks exceed the launch grid; use a larger chunk")
        self.kernels = kernels(sig)

    def with_config(self, **changes) -> Plan:
        """The same plan with other tile parameters (``chunk`` must stay: it fixes the chunk map)."""
        if changes.get("chunk", self.cfg["chunk"]) != self.cfg["chunk"]:
            raise ValueError("with_config: the chunk size fixes the chunk map; build a new Plan")
        other = object.__new__(Plan)
        other.__dict__.update(self.__dict__, cfg={**self.cfg, **changes})
        return other

    def common(self) -> dict:
        return dict(H=self.H, K=self.K, V=self.V, C=self.cfg["chunk"], PREC=self.cfg["fp32_dot"])


def _or(t: torch.Tensor | None, dummy: torch.Tensor) -> torch.Tensor:
    """Kernels take every pointer; an unused one gets any tensor (it is never read)."""
    return t if t is not None else dummy


def cumsum(P: Plan, g: torch.Tensor) -> torch.Tensor:
    """Chunk-local inclusive cumulative sum of a [B, T, H, D] log-gate, in fp32."""
    D = g.shape[-1]
    out = empty(*g.shape, dtype=torch.float32, device=g.device)
    if P.TC:
        bd = min(pow2(D), 64)
        P.kernels.chunk_local_cumsum[(cdiv(D, bd), P.TC, P.H)](
            g, out, P.cu, P.chunk_seq, P.chunk_loc, H=P.H, D=D, C=P.cfg["chunk"], BD=bd, num_warps=4
        )
    return out


def fused_cumsum(P: Plan) -> bool:
    """``fwd_cumsum="fused"``: the forward's kernels take the raw key log-gates in place of ``gk_cum``
    and sum each chunk's themselves; no ``chunk_local_cumsum`` launch before them."""
    return P.cfg["fwd_cumsum"] == "fused"


def fwd_state(P: Plan, k, v, gk_cum, gv_cum, h0, output_final_state: bool, gk_out=None):
    """(hs [slots, H, K, V] in k's dtype: the state entering every chunk, final state or None).
    With :func:`fused_cumsum`, ``gk_cum`` is the raw log-gate ``gk``; so it is with ``gk_out``
    (``fwd_cumsum="state"``), the fp32 tensor the walk stores the chunk-local sums to."""
    cfg, dev = P.cfg, v.device
    hs = empty(P.slots, P.H, P.K, P.V, dtype=k.dtype, device=dev)
    ht = empty(P.N, P.H, P.K, P.V, dtype=torch.float32, device=dev) if output_final_state else None
    bk, bv = cfg["state_BK"], cfg["state_BV"]
    P.kernels.chunk_fwd_state[(cdiv(P.K, bk), cdiv(P.V, bv), P.N * P.H)](
        k, v, _or(gk_cum, k), _or(gv_cum, k), _or(h0, k), hs, _or(ht, k), _or(gk_out, k), P.cu, P.chunk_off,
        BK=bk, BV=bv, HAS_H0=h0 is not None, STORE_FINAL=ht is not None,
        FUSED_CUMSUM=fused_cumsum(P) or gk_out is not None, STORE_CUM=gk_out is not None,
        num_warps=cfg["state_warps"], num_stages=cfg["num_stages"], **P.common(),
    )  # fmt: skip
    return hs, ht


def fwd_o(P: Plan, q, k, v, gk_cum, gv_cum, hs, out_dtype: torch.dtype):
    """(o, ox): ox = o without its zero-step pairs, kept for the value log-decay gradient."""
    cfg, dev = P.cfg, v.device
    o = empty(P.B, P.T, P.H, P.V, dtype=out_dtype, device=dev)
    ox = empty(P.B, P.T, P.H, P.V, dtype=torch.float32, device=dev) if P.value else None
    if P.TC:
        P.kernels.chunk_fwd_o[(cdiv(P.V, cfg["fwd_BV"]), P.TC, P.H)](
            q, k, v, _or(gk_cum, q), _or(gv_cum, q), hs, o, _or(ox, q), P.cu, P.chunk_seq, P.chunk_loc,
            P.scale, SC=cfg["sub"], BK=cfg["fwd_BK"], BV=cfg["fwd_BV"], BKD=cfg["diag_BK"],
            num_warps=cfg["fwd_warps"], num_stages=cfg["num_stages"], **P.common(),
        )  # fmt: skip
    return o, ox


def fwd_o_split(P: Plan, q, k, v, gk_cum, hs, out_dtype: torch.dtype):
    """(o, A) (``fwd_mode="split"`` or ``"pairs"``, KEY decay only): the chunks' score matrices A to
    fp32 scratch, per sub-chunk (split) or per chunk (pairs), then the outputs per chunk; A is kept
    for :func:`bwd_dv_split` (:mod:`scandsl.lowering.chunk_vector_split`, ``chunk_vector_pairs``).
    With :func:`fused_cumsum` (``fwd_mode="pairs"`` only), ``gk_cum`` is the raw log-gate ``gk``."""
    cfg, dev = P.cfg, v.device
    o = empty(P.B, P.T, P.H, P.V, dtype=out_dtype, device=dev)
    a = fwd_scores(P, q, k, gk_cum)
    if P.TC:
        P.kernels.chunk_fwd_o_split[(cdiv(P.V, cfg["fwd_BV"]), P.TC, P.H)](
            q, k, v, gk_cum, hs, a, o, P.cu, P.chunk_seq, P.chunk_loc, P.scale,
            SC=cfg["sub"], BK=cfg["fwd_BK"], BV=cfg["fwd_BV"], FUSED_CUMSUM=fused_cumsum(P),
            num_warps=cfg["fwd_warps"], num_stages=cfg["num_stages"], **P.common(),
        )  # fmt: skip
    return o, a


def fwd_scores(P: Plan, q, k, gk_cum) -> torch.Tensor:
    """The chunks' causal score matrices A [chunks, H, C, C] in fp32 (``fwd_mode`` "pairs" or "split")."""
    cfg = P.cfg
    C, SC = cfg["chunk"], cfg["sub"]
    a = empty(P.TC, P.H, C, C, dtype=torch.float32, device=q.device)
    if not P.TC:
        return a
    if cfg["fwd_mode"] == "pairs":
        P.kernels.chunk_fwd_a_pairs[(P.TC, P.H)](
            q, k, gk_cum, a, P.cu, P.chunk_seq, P.chunk_loc, P.scale,
            H=P.H, K=P.K, C=C, SC=SC, BK=cfg["fwd_BK"], KD=cfg["pairs_BK"], FOLD=cfg["fwd_diag"] == "fold",
            PREC=cfg["fp32_dot"], FUSED_CUMSUM=fused_cumsum(P),
            num_warps=cfg["fwd_warps"], num_stages=cfg["fwd_a_stages"],
        )  # fmt: skip
    else:
        P.kernels.chunk_fwd_a[(P.TC * (C // SC), P.H)](
            q, k, gk_cum, a, P.cu, P.chunk_seq, P.chunk_loc, P.scale,
            H=P.H, K=P.K, C=C, SC=SC, BK=cfg["fwd_BK"], BKD=cfg["diag_BK"], PREC=cfg["fp32_dot"],
            num_warps=cfg["fwd_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip
    return a


def fwd_o_wide(W: Plan, P: Plan, q, k, v, gk_cum, hs, out_dtype: torch.dtype) -> torch.Tensor:
    """o without gradients (``infer_wide``): ``hs`` holds the states entering W's chunks (twice P's),
    ``gk_cum`` the key log-gate sums over W's chunks; the scores run on P's chunks, the halves of
    W's (their sums differ from P's own by a constant a chunk, which no score reads)."""
    cfg = W.cfg
    o = empty(W.B, W.T, W.H, W.V, dtype=out_dtype, device=v.device)
    a = fwd_scores(P.with_config(fwd_cumsum="kernel"), q, k, gk_cum)
    if W.TC:
        W.kernels.chunk_fwd_o_wide[(cdiv(W.V, cfg["fwd_BV"]), W.TC, W.H)](
            q, k, v, gk_cum, hs, a, o, W.cu, W.chunk_seq, W.chunk_loc, P.chunk_off, W.scale,
            SC=P.cfg["chunk"], BK=cfg["wide_BK"], BV=cfg["fwd_BV"],
            num_warps=cfg["fwd_warps"], num_stages=cfg["wide_stages"], **W.common(),
        )  # fmt: skip
    return o


def bwd_dv_split(P: Plan, q, k, do, gk_cum, dhs, a):
    """dv from the forward's scores ``a`` (``fwd_mode="split"``): one program per (V-block, chunk, head)."""
    cfg = P.cfg
    dv = empty(*do.shape[:-1], P.V, dtype=do.dtype, device=do.device)
    if P.TC:
        P.kernels.chunk_bwd_dv_split[(cdiv(P.V, cfg["dv_BV"]), P.TC, P.H)](
            q, k, do, gk_cum, dhs, a, dv, P.cu, P.chunk_seq, P.chunk_loc,
            SC=cfg["sub"], BK=cfg["dv_BK"], BV=cfg["dv_BV"],
            num_warps=cfg["dv_warps"], num_stages=cfg["num_stages"], **P.common(),
        )  # fmt: skip
    return dv


def bwd_state(P: Plan, q, do, gk_cum, gv_cum, hs, dht, want_dh0: bool):
    """(dhs [slots, H, K, V]: dL/d(state leaving every chunk), dL/d(initial state) or None)."""
    cfg, dev = P.cfg, do.device
    dhs = empty(P.slots, P.H, P.K, P.V, dtype=hs.dtype, device=dev)
    dh0 = empty(P.N, P.H, P.K, P.V, dtype=torch.float32, device=dev) if want_dh0 else None
    bk, bv = cfg["state_BK"], cfg["state_BV"]
    P.kernels.chunk_bwd_state[(cdiv(P.K, bk), cdiv(P.V, bv), P.N * P.H)](
        q, do, _or(gk_cum, q), _or(gv_cum, q), _or(dht, q), dhs, _or(dh0, q), P.cu, P.chunk_off, P.scale,
        BK=bk, BV=bv, HAS_DHT=dht is not None, STORE_DH0=dh0 is not None,
        num_warps=cfg["state_warps"], num_stages=cfg["num_stages"], **P.common(),
    )  # fmt: skip
    return dhs, dh0


def bwd_dv(P: Plan, q, k, v, do, ox, gk_cum, gv_cum, hs, dhs):
    """(dv, d gv in fp32 or None)."""
    cfg, dev = P.cfg, v.device
    dv = empty(*v.shape, dtype=v.dtype, device=dev)
    dgv = empty(*gv_cum.shape, dtype=torch.float32, device=dev) if P.value else None
    if P.TC:
        P.kernels.chunk_bwd_dv[(cdiv(P.V, cfg["dv_BV"]), P.TC, P.H)](
            q, k, v, do, _or(ox, q), _or(gk_cum, q), _or(gv_cum, q), hs, dhs, dv, _or(dgv, q),
            P.cu, P.chunk_seq, P.chunk_loc, P.scale,
            SC=cfg["sub"], BK=cfg["dv_BK"], BV=cfg["dv_BV"], BKD=cfg["diag_BK"],
            num_warps=cfg["dv_warps"], num_stages=cfg["num_stages"], **P.common(),
        )  # fmt: skip
    return dv, dgv


def _dqk_outputs(P: Plan, q, k, gk_cum) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(dq, dk, d gk in fp32 or None), to be written by either dqk_mode."""
    dq = empty(*q.shape, dtype=q.dtype, device=q.device)
    dk = empty(*k.shape, dtype=k.dtype, device=q.device)
    dgk = empty(*gk_cum.shape, dtype=torch.float32, device=q.device) if P.key else None
    return dq, dk, dgk


def bwd_dqk(P: Plan, q, k, v, do, gk_cum, gv_cum, hs, dhs):
    """(dq, dk, d gk in fp32 or None)."""
    cfg = P.cfg
    dq, dk, dgk = _dqk_outputs(P, q, k, gk_cum)
    if P.TC:
        P.kernels.chunk_bwd_dqk[(cdiv(P.K, cfg["dqk_BK"]), P.TC, P.H)](
            q, k, v, do, _or(gk_cum, q), _or(gv_cum, q), hs, dhs, dq, dk, _or(dgk, q),
            P.cu, P.chunk_seq, P.chunk_loc, P.scale,
            SC=cfg["sub"], BK=cfg["dqk_BK"], BV=cfg["dqk_BV"], BVD=cfg["diag_BV"],
            num_warps=cfg["dqk_warps"], num_stages=cfg["num_stages"], **P.common(),
        )  # fmt: skip
    return dq, dk, dgk


def _scores(P: Plan, do, v, gv_cum) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(da, dat, ddg): the V-wide backward scores in fp32 scratch, ``chunk_bwd_da``'s output."""
    cfg, dev = P.cfg, v.device
    C, SC = cfg["chunk"], cfg["sub"]
    da = empty(P.TC, P.H, C, C, dtype=torch.float32, device=dev)
    dat = empty(P.TC, P.H, C, C, dtype=torch.float32, device=dev)
    ddg = empty(P.TC, P.H, C, SC, dtype=torch.float32, device=dev)
    if cfg["da_scores"] == "full":  # KEY decay: blocks of one do v^T product (chunk_vector_split)
        P.kernels.chunk_bwd_da_key[(P.TC, P.H)](
            do, v, da, dat, ddg, P.cu, P.chunk_seq, P.chunk_loc, SC=SC, BV=cfg["da_BV"],
            num_warps=cfg["da_warps"], num_stages=cfg["num_stages"], **P.common(),
        )  # fmt: skip
        return da, dat, ddg
    P.kernels.chunk_bwd_da[(P.TC, P.H)](
        do, v, _or(gv_cum, do), da, dat, ddg, P.cu, P.chunk_seq, P.chunk_loc,
        SC=SC, BV=cfg["da_BV"], BVD=cfg["diag_BV"],
        num_warps=cfg["da_warps"], num_stages=cfg["num_stages"], **P.common(),
    )  # fmt: skip
    return da, dat, ddg


def bwd_dqk_shared(P: Plan, q, k, v, do, gk_cum, gv_cum, hs, dhs):
    """As :func:`bwd_dqk` (``dqk_mode="shared_scores"``): the V-wide scores go through fp32
    scratch, written once per (chunk, head) by ``chunk_bwd_da``."""
    cfg = P.cfg
    SC = cfg["sub"]
    dq, dk, dgk = _dqk_outputs(P, q, k, gk_cum)
    if P.TC:
        da, dat, ddg = _scores(P, do, v, gv_cum)
        P.kernels.chunk_bwd_dqk_shared[(cdiv(P.K, cfg["dqk_BK"]), P.TC, P.H)](
            q, k, v, do, _or(gk_cum, q), _or(gv_cum, q), hs, dhs, da, dat, ddg, dq, dk, _or(dgk, q),
            P.cu, P.chunk_seq, P.chunk_loc, P.scale, SC=SC, BK=cfg["dqk_BK"], BV=cfg["dqk_BV"],
            num_warps=cfg["dqk_warps"], num_stages=cfg["num_stages"], **P.common(),
        )  # fmt: skip
    return dq, dk, dgk


def bwd_dqk_split(P: Plan, q, k, v, do, gk_cum, gv_cum, hs, dhs):
    """As :func:`bwd_dqk_shared` (``dqk_mode="split"``, KEY decay only): the intra-chunk terms per
    sub-chunk into fp32 scratch, then the state terms and the gate gradient per chunk
    (:mod:`scandsl.lowering.chunk_vector_split`)."""
    cfg = P.cfg
    C, SC = cfg["chunk"], cfg["sub"]
    dq, dk, dgk = _dqk_outputs(P, q, k, gk_cum)
    if P.TC:
        da, dat, ddg = _scores(P, do, v, gv_cum)
        before = P.sig.readout is Readout.BEFORE
        dqa, dka, xa = (empty(*q.shape, dtype=torch.float32, device=q.device) for _ in range(3))
        xqa = empty(*q.shape, dtype=torch.float32, device=q.device) if before else xa
        nk = cdiv(P.K, cfg["dqk_BK"])
        P.kernels.chunk_bwd_dqk_intra[(P.TC * (C // SC), nk, P.H)](
            q, k, gk_cum, da, dat, ddg, dqa, dka, xa, xqa, P.cu, P.chunk_seq, P.chunk_loc, P.scale,
            H=P.H, K=P.K, C=C, SC=SC, BK=cfg["dqk_BK"], STORE_XQ=before, DIAG_COLS=cfg["dqk_diag"] == "cols",
            PREC=cfg["fp32_dot"],
            num_warps=cfg["dqk_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip
        P.kernels.chunk_bwd_dqk_inter[(nk, P.TC, P.H)](
            q, k, v, do, gk_cum, hs, dhs, dqa, dka, xa, xqa, dq, dk, dgk, P.cu, P.chunk_seq, P.chunk_loc,
            P.scale, SC=SC, BK=cfg["dqk_BK"], BV=cfg["dqk_BV"], STORE_XQ=before,
            num_warps=cfg["dqk_warps"], num_stages=cfg["num_stages"], **P.common(),
        )  # fmt: skip
    return dq, dk, dgk
