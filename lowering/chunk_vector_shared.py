"""``dqk_mode="shared_scores"``: the backward's V-wide scores built once per (chunk, head).

How it is parallelised: two launches replace ``chunk_bwd_dqk``.

1. ``chunk_bwd_da`` — per (chunk, head): for every sub-chunk I the scores that depend on all of
   V — ``da = do . v^T`` against earlier rows (``da_off``), its transpose against later rows
   (``dat_off``), the intra-sub-chunk block (``da_dg``) and the zero-step pairs — written once
   to fp32 scratch ``da, dat [TC, H, C, C]`` and ``ddg [TC, H, C, SC]``.
2. ``chunk_bwd_dqk_shared`` — per (K-block, chunk, head), as ``chunk_bwd_dqk``, but its V loop
   only forms the state terms (``do h^T``, ``v dh^T``, which differ per K-block) and it reads the
   scores from scratch: the fused kernel rebuilds them in every one of the K / BK programs.

Packing: row block I of ``da`` holds ``da_off`` (columns < I*SC, causal) plus the zero-step score
at column ``i - QSHIFT`` (a cell the causal mask leaves empty); row block I of ``dat`` holds
``dat_off`` (columns >= I*SC + SC) plus the zero-step score at column ``j + QSHIFT``. The value
log-decay rebasing (``vref`` per sub-chunk) is already folded in, exactly as the fused kernel
applies it, so the dq/dk algebra after the loads is unchanged (``key_apply``, ``key_gate_grad``).

Without a value decay (KEY decay, ``da_scores="full"``, the default there) every score is a cell of
one product ``do v^T`` a chunk, and ``chunk_bwd_da_key`` (:mod:`scandsl.lowering.chunk_vector_split`)
writes the same layout from it: 0.07 against 0.22 ms for gla at B=4 T=4096 H=16 V=128 on the H100.
"""

from __future__ import annotations

from scandsl.lowering.chunk_vector_templates import (
    DQK_SUB_CHUNKS,
    KEY_GRADIENTS,
    SCORE_ACCUMULATORS,
    SCORE_MASKS,
    V_BLOCK_ROWS,
    V_BLOCK_SCORES,
    V_BLOCK_STATES,
    at_depth,
    chunk_program,
)

__all__ = ["BWD_DA", "BWD_DQK_SHARED", "SCORES_PROGRAM", "SCRATCH_SCORES", "scores_program", "slots"]



def scores_program(dtype_of: str) -> str:
    """Program (chunk, head) of a kernel writing a chunk's [C, C] scores to scratch: the chunk's first
    step / length / state slot, its row ranges, its first scratch row, and ``DT``, the 16-bit dtype
    of operand ``dtype_of`` (chunk_bwd_da, chunk_bwd_da_key of chunk_vector_split: ``do``;
    chunk_fwd_a_pairs of chunk_vector_pairs: ``q``)."""
    return f"""
i_c, i_h = tl.program_id(0), tl.program_id(1)
bos, L, slot = chunk_coords(cu, chunk_seq, chunk_loc, i_c, C)
DT = {dtype_of}.dtype.element_ty
rows_c = tl.arange(0, C)
o_s = tl.arange(0, SC)
base = (i_c.to(tl.int64) * H + i_h) * C  # first scratch row of this (chunk, head)
"""


SCORES_PROGRAM = scores_program("do")  # the backward's score kernels

BWD_DA = f'''

@triton.jit
def chunk_bwd_da(do, v, gv_cum, da, dat, ddg, cu, chunk_seq, chunk_loc,
                 H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, SC: tl.constexpr,
                 BV: tl.constexpr, BVD: tl.constexpr, PREC: tl.constexpr):
    """The V-wide backward scores of one chunk and head, to scratch. Grid (chunks, H).

    da_ij = sum_v do_iv v_jv [exp(bvq_iv - bv_jv)] on causal pairs (j <= i - QSHIFT), rebased per
    sub-chunk like chunk_bwd_dqk; K appears only because the launcher passes the common sizes.
    """
{at_depth(4, SCORES_PROGRAM)}
    ns = (L + SC - 1) // SC
    for I in range(0, ns):
        rows_i = I * SC + o_s
        last_i = tl.minimum(I * SC + SC, L) - 1  # the sub-chunk's last valid row
{at_depth(8, SCORE_ACCUMULATORS)}
        for v0 in range(0, V, BV):
{at_depth(12, V_BLOCK_ROWS)}
{at_depth(12, V_BLOCK_SCORES)}
            @value_scores_only@
        @value_diag@
{at_depth(8, SCORE_MASKS)}
        # the zero-step scores go into cells the causal masks above leave at 0
        da_off += tl.where(rows_c[None, :] == rows_i[:, None] - QSHIFT, da_zs[:, None], 0.0)
        dat_off += tl.where(rows_c[None, :] == rows_i[:, None] + QSHIFT, dat_zs[:, None], 0.0)
        offs = (base + rows_i[:, None]) * C + rows_c[None, :]  # [SC, C] rows of this sub-chunk
        tl.store(da + offs, da_off)
        tl.store(dat + offs, dat_off)
        tl.store(ddg + (base + rows_i[:, None]) * SC + o_s[None, :], da_dg)
'''

# sub-chunk I's rows of chunk_bwd_da's scratch, the zero-step cells taken apart again
SCRATCH_SCORES = """
offs = (base + rows_i[:, None]) * C + rows_c[None, :]
da_row = tl.load(da + offs)  # [SC, C] da against earlier sub-chunks + zero-step cells
dat_row = tl.load(dat + offs)  # [SC, C] da^T against later sub-chunks + zero-step cells
da_dg = tl.load(ddg + (base + rows_i[:, None]) * SC + o_s[None, :])  # [SC, SC] inside the sub-chunk
zs = rows_c[None, :] == rows_i[:, None] - QSHIFT
da_zs = tl.sum(tl.where(zs, da_row, 0.0), axis=1)  # [SC]
da_off = tl.where(zs, 0.0, da_row)
zs_t = rows_c[None, :] == rows_i[:, None] + QSHIFT
dat_zs = tl.sum(tl.where(zs_t, dat_row, 0.0), axis=1)  # [SC]
dat_off = tl.where(zs_t, 0.0, dat_row)
"""

BWD_DQK_SHARED = f'''

@triton.jit
def chunk_bwd_dqk_shared(q, k, v, do, gk_cum, gv_cum, hs, dhs, da, dat, ddg, dq, dk, dgk, cu, chunk_seq,
                         chunk_loc, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                         C: tl.constexpr, SC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                         PREC: tl.constexpr):
    """chunk_bwd_dqk with the scores read from chunk_bwd_da's scratch. Grid (K-blocks, chunks, H).

    The V loop keeps only what differs per K-block: dq_in = do h^T and dk_st = v dh^T.
    """
{at_depth(4, chunk_program("k"))}
    base = (i_c.to(tl.int64) * H + i_h) * C
{at_depth(4, DQK_SUB_CHUNKS)}
        for v0 in range(0, V, BV):
{at_depth(12, V_BLOCK_ROWS)}
{at_depth(12, V_BLOCK_STATES)}
            @value_state@
{at_depth(8, SCRATCH_SCORES)}
{at_depth(8, KEY_GRADIENTS)}
'''

# dq_in / dk_st: the state terms, per K-block (the first lines of the fused value_scores slot)
_VALUE_STATE_GATED = """
bvqi = load_rows(gv_cum, bos, rows_i - QSHIFT, L, offs_v, i_h, H, V)  # [SC, BV]
bvi = load_rows(gv_cum, bos, rows_i, L, offs_v, i_h, H, V)  # [SC, BV]
bv_last = load_row(gv_cum, bos, L - 1, L, offs_v, i_h, H, V)  # [BV]
dq_in += tl.dot((b_doi * tl.exp(bvqi)).to(DT), tl.trans(b_h), input_precision=PREC)
v_end = (b_vi * tl.exp(tl.minimum(bv_last[None, :] - bvi, 0.0))).to(DT)
dk_st += tl.dot(v_end, tl.trans(b_dh), input_precision=PREC)
"""
_VALUE_STATE_PLAIN = """
dq_in += tl.dot(b_doi.to(DT), tl.trans(b_h), input_precision=PREC)
dk_st += tl.dot(b_vi.to(DT), tl.trans(b_dh), input_precision=PREC)
"""
# lines of the fused value_scores slot that only the state terms need
_STATE_ONLY = ("dq_in", "dk_st", "v_end", "bv_last")


def slots(value_scores: str, value: bool) -> dict[str, str]:
    """The two extra slots, given the fused kernel's ``value_scores`` text: the scores without
    the state terms (``value_scores_only``) and the state terms alone (``value_state``)."""
    only = "\n".join(ln for ln in value_scores.splitlines() if not any(w in ln for w in _STATE_ONLY))
    return {
        "value_scores_only": only,
        "value_state": (_VALUE_STATE_GATED if value else _VALUE_STATE_PLAIN).strip("\n"),
    }
