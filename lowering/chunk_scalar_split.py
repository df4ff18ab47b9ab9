"""Split forward of the chunked scalar-decay strategy (``fwd_mode="split"``), FLA/SSD-style.

How it is parallelised: two launches instead of the fused forward's one serial walk.

1. ``chunk_scalar_fwd_h``, one program per (K-block, V-block, sequence, head): the only serial
   part. It walks its sequence's chunks and stores the state *entering* each chunk into a scratch
   ``hs`` (``[n_chunks, H, K, V]``, fp32 by default), then carries it over the chunk
   (``h_end = exp(gn) h + sum_j exp(gn - gc_j) k_j v_j^T``), and writes the final state. It does
   no query work, so each step is one ``[BK, C] x [C, BV]`` product.
2. ``chunk_scalar_fwd_o``, one program per (chunk, head, V-block) on a 1-D grid, all independent: the masked,
   decayed intra-chunk product plus the read of the chunk-start state from ``hs``::

       o_s = sum_{j <= s} exp(gq_s - gc_j) (q~_s . k_j) v_j  +  exp(gq_s) h^T q~_s

The intra-chunk products (the bulk of the FLOPs) thus run over ``n_chunks * H * NV`` programs
instead of ``N * H * NV``. Chunks start at each sequence's own start and never cross it (the chunk
map of :mod:`scandsl.lowering._chunks`). Slots (decay, read-out) are those of
:mod:`scandsl.lowering.chunk_scalar_slots`, and the kernel text is composed from the fused
kernels' pieces (:mod:`scandsl.lowering.chunk_scalar_source`); the backward is unchanged (it needs
only q, k, v, g, o and the final state).
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from scandsl.lowering._chunks import chunk_map
from scandsl.lowering._source import load_source
from scandsl.lowering.chunk_scalar_launch import Plan, cdiv, empty
from scandsl.lowering.chunk_scalar_slots import tag
from scandsl.lowering.chunk_scalar_source import (
    CARRY_STATE,
    CAUSAL_READ,
    READ_OUT,
    at_depth,
    chunk_inputs,
    module_source,
    start_state,
    tiles,
)

from scandsl._core import CoreSig

__all__ = ["generate_split_source", "launch_fwd_split", "split_meta", "STATE_DTYPES"]

# scratch dtype of the chunk-start states: "input" stores them in q's dtype, which is the dtype
# the output kernel casts them to for the tensor cores anyway (half the traffic, same result)
STATE_DTYPES = ("fp32", "input")

_FWD_H = f"""

@triton.jit
def chunk_scalar_fwd_h(
    k, v, g, hs, h0, ht, cu_seqlens, chunk_off, T,
    H, K: tl.constexpr, V: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NV: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
):
    # the serial pass: state entering each chunk of one (K-block, V-block) of (sequence, head)
    i_kv = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_k = i_kv // NV
    i_v = i_kv % NV
    i_n = i_nh // H
    i_h = i_nh % H
{at_depth(4, tiles(k_block=True, v_block=True))}
    first = tl.load(chunk_off + i_n).to(tl.int64)  # this sequence's first slot of hs
    p_kv = o_k[:, None] * V + o_v[None, :]  # [BK, BV] inside one [K, V] state
    p_hv = i_nh.to(tl.int64) * K * V + p_kv  # [BK, BV] in [N, H, K, V]
    m_hv = m_k[:, None] & m_v[None, :]
{at_depth(4, start_state("b_h", "HAS_H0", "h0", note="  # S^T[K-block, V-block] at the chunk start"))}
    n_c = tl.cdiv(eos - bos, C).to(tl.int32)
    for i_c in range(0, n_c):
        t = bos + i_c * C + o_c  # [C] token rows; the chunk never crosses eos
{at_depth(8, chunk_inputs("k", "v"))}
        @gates@
        p_hs = hs + ((first + i_c) * H + i_h) * K * V + p_kv  # [BK, BV]
        tl.store(p_hs, b_h.to(hs.dtype.element_ty), mask=m_hv)
{at_depth(8, CARRY_STATE)}
    if STORE_HT:
        tl.store(ht + p_hv, b_h, mask=m_hv)
"""

_FWD_O = f"""

@triton.jit
def chunk_scalar_fwd_o(
    q, k, v, g, o, hs, cu_seqlens, chunk_seq, chunk_loc, scale, T,
    H, K: tl.constexpr, V: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NV: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # one chunk of one head, one V-block; BK covers K. Independent of every other program.
    # V-blocks of a chunk are neighbours in launch order, so they share its q and k through L2.
    i_ch = tl.program_id(0) // NV  # global chunk * H + head: also the slot of hs holding its start state
    i_v = tl.program_id(0) % NV
    i_g = i_ch // H
    i_h = i_ch % H
    i_n = tl.load(chunk_seq + i_g)
    i_c = tl.load(chunk_loc + i_g)
{at_depth(4, tiles(k_block=False, v_block=True))}
    {CAUSAL_READ}
    t = bos + i_c * C + o_c  # [C] token rows
{at_depth(4, chunk_inputs("q", "k", "v"))}
    p_hs = hs + i_ch.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    b_h = tl.load(p_hs, mask=m_k[:, None] & m_v[None, :], other=0.0)  # [BK, BV] chunk-start state
    @gates@
{at_depth(4, READ_OUT)}
"""


def generate_split_source(sig: CoreSig, config: dict | None = None) -> str:
    """Readable Triton text of the two split-forward kernels for ``sig`` (``fp32_dot`` as in the
    fused source)."""
    return module_source(_FWD_H + _FWD_O, sig, config, sig.describe() + " (split forward)")


@functools.cache
def _kernels(sig: CoreSig, fp32_dot: str) -> ModuleType:
    return load_source(
        generate_split_source(sig, {"fp32_dot": fp32_dot}), name=f"chunk_scalar_split_{tag(sig)}"
    )


def split_meta(P: Plan) -> tuple[dict, dict]:
    """Constexpr/launch keywords of (state pass, output kernel), shared with ahead-of-time checks."""
    cfg = P.cfg
    C, bv = cfg["chunk"], min(cfg["block_v"], P.VP)
    bk_h = min(cfg.get("split_block_k", P.KP), P.KP)
    bv_h = min(cfg.get("split_block_v", bv), P.VP)
    h_meta = dict(
        K=P.K, V=P.V, C=C, BK=bk_h, BV=bv_h, NV=cdiv(P.V, bv_h), IS_VARLEN=P.varlen,
        num_warps=cfg.get("split_num_warps", cfg["num_warps"]), num_stages=cfg["num_stages"],
    )  # fmt: skip
    o_meta = dict(
        K=P.K, V=P.V, C=C, BK=P.KP, BV=bv, NV=cdiv(P.V, bv), IS_VARLEN=P.varlen,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return h_meta, o_meta


def launch_fwd_split(P: Plan, q, k, v, g, h0, cu_seqlens, out_dtype, output_final_state: bool):
    """``(o, final_state or None)`` like :func:`chunk_scalar_launch.launch_fwd`, in two launches."""
    dev = v.device
    cu, seq, loc, off = chunk_map(cu_seqlens, P.B, P.T, P.cfg["chunk"], dev)
    n_chunks = seq.numel()
    h_meta, o_meta = split_meta(P)
    kind = P.cfg.get("split_state", "fp32")
    if kind not in STATE_DTYPES:
        raise ValueError(f"config['split_state']: expected one of {STATE_DTYPES}, got {kind!r}")
    hs_dtype = torch.float32 if kind == "fp32" else q.dtype
    o = empty(P.B, P.T, P.H, P.V, dtype=out_dtype, device=dev)
    ht = empty(P.N, P.H, P.K, P.V, dtype=torch.float32, device=dev) if output_final_state else None
    hs = empty(max(n_chunks, 1), P.H, P.K, P.V, dtype=hs_dtype, device=dev)
    mods = _kernels(P.sig, P.cfg.get("fp32_dot", "ieee"))
    nk_h = cdiv(P.K, h_meta["BK"])
    mods.chunk_scalar_fwd_h[(nk_h * h_meta["NV"], P.N * P.H)](
        k, v, q if g is None else g, hs, q if h0 is None else h0, q if ht is None else ht,
        cu, off, P.T, P.H, HAS_H0=h0 is not None, STORE_HT=ht is not None, **h_meta,
    )  # fmt: skip
    if n_chunks:
        mods.chunk_scalar_fwd_o[(n_chunks * P.H * o_meta["NV"],)](
            q, k, v, q if g is None else g, o, hs, cu, seq, loc, P.scale, P.T, P.H, **o_meta,
        )  # fmt: skip
    return o, ht
