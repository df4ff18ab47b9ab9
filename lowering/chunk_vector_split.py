"""The split modes (KEY decay): the forward's outputs and the backward's dq / dk each in two
launches, intra-chunk and inter-chunk. ``fwd_mode="split"`` is at the end of this docstring.

``dqk_mode="split"``: dq / dk in two launches, intra-chunk and inter-chunk.

Why: the other modes walk a chunk's sub-chunks inside one program that also holds the state
terms and the chunk-wide gate-gradient sums, and sit at the 255-register cap with spills on sm_90
(``bench/gpu_check_chunk_vector.py --aot``); the dq/dk kernel was 20.6 of gla's 30.5 ms backward
at 64K tokens on the H100. flash-linear-attention splits the same work the way this mode does
(intra per sub-chunk, inter per chunk). The KEY-decay default since the tuning of 2026-11-24.

How it is parallelised, after ``chunk_bwd_da`` (the V-wide scores to scratch, as in
``shared_scores``):

1. ``chunk_bwd_dqk_intra`` — one program per (chunk x sub-chunk, K-block, head): the sub-chunk's
   rows of dq and dk from pairs inside the chunk (earlier / later sub-chunks by rebased
   tensor-core products, the sub-chunk itself elementwise, the zero-step pair apart), written to
   fp32 scratch: ``dqa = dq_intra + dq_zs``, ``dka = dk_intra + dk_zs``, and the intra part of the
   gate gradient's summand, ``xa = q dq_intra - k dk_intra`` (``xqa = q dq_intra`` as well when the
   read-out comes before the update);
   the sub-chunk's own pairs by ``dqk_diag``: ``"cols"`` (default) walks them in SC steps of
   ``[SC, BK]`` tiles, step ``c`` adding key ``c``'s column of dq's pairs and query ``c``'s row of
   dk's (rows loaded from the cache, as flash-linear-attention's ``chunk_gla_bwd_kernel_intra``
   walks its sub-chunk), ``"cube"`` forms two ``[SC, SC, BK]`` fp32 cubes (``diag_apply``). The
   exponentials are the same count; the cubes hold 128 fp32 registers a thread at BK=64 and 4
   warps. Timed on the H100 (gla, B=4 T=4096 H=16 K=V=128 bf16, ``bench/gpu_ab_gla_bwd.py``,
   ``bench/results/gpu_ab_gla_bwd_run2.json``): the kernel 2.02 ms with cubes, 1.04 with
   columns (FLA's ``chunk_gla_bwd_kernel_intra`` 0.99, run 1); rwkv6 2.39 -> 1.17;
2. ``chunk_bwd_dqk_inter`` — one program per (K-block, chunk, head): the state terms for the whole
   chunk as ``[C, V] x [V, BK]`` products (``do h^T``, ``v dh^T``), then dq, dk and the key
   log-decay gradient as one chunk-wide reverse cumulative sum,
       dg_r = sum_{r' >= r} x_r' + st0 + sum_{r' < r} y_r'   (y of the last row 0),
   the algebra of ``key_gate_grad`` (:mod:`scandsl.lowering.chunk_vector_slots`) without the walk
   over sub-chunks.

``fwd_mode="split"``: ``chunk_fwd_o`` (one program per V-block, chunk and head, walking the
sub-chunks with ``[SC, *]`` products, 244 registers in an sm_90 build and no wgmma) becomes

1. ``chunk_fwd_a`` — one program per (chunk x sub-chunk, head): the sub-chunk's rows of the
   chunk's score matrix ``A [C, C]`` (``a_ij = sum_k q_ik k_jk exp(bkq_ik - bk_jk)`` on causal
   pairs, zero-step pair included, zeros after), into fp32 scratch: rebased tensor-core products
   against earlier sub-chunks, the sub-chunk itself elementwise — ``chunk_fwd_o``'s arithmetic;
2. ``chunk_fwd_o_split`` — one program per (V-block, chunk, head): ``o = (q exp(bkq)) h0 + A v``
   as ``[C, BK] x [BK, BV]`` and ``[C, C] x [C, BV]`` products.

The forward keeps ``A`` for the backward (``[chunks, H, C, C]`` fp32, 67 MB at B=4 T=4096 H=16),
whose dv is then ``chunk_bwd_dv_split``, one program per (V-block, chunk, head):
``dv = (k exp(bk_last - bk)) dh + A^T do``, two tensor-core products, instead of ``chunk_bwd_dv``
rebuilding the scores sub-chunk by sub-chunk.

``fwd_mode="pairs"`` keeps ``chunk_fwd_o_split`` and A, and builds A with ``chunk_fwd_a_pairs``, one
program per (chunk, head) and no ``[SC, SC, BK]`` cube: :mod:`scandsl.lowering.chunk_vector_pairs`.
"""

from __future__ import annotations

import textwrap

from scandsl.lowering.chunk_vector_pairs import FWD_A_PAIRS
from scandsl.lowering.chunk_vector_shared import SCORES_PROGRAM, SCRATCH_SCORES
from scandsl.lowering.chunk_vector_templates import (
    KEY_DIAG,
    KEY_ROWS,
    ZERO_STEP_QK,
    at_depth,
    chunk_program,
    key_intra,
)

__all__ = ["BWD_DQK_SPLIT", "FWD_SPLIT", "BWD_DV_SPLIT"]

# program (chunk * C/SC + sub-chunk, ..., head) of a per-sub-chunk kernel: its chunk i_c and
# sub-chunk I, the chunk's first step / length / state slot, the row ranges of the chunk and of a
# sub-chunk, and the chunk's first scratch row (chunk_fwd_a and chunk_bwd_dqk_intra share it)
_SUB_CHUNK = """
i_c, I = i_cs // (C // SC), i_cs % (C // SC)
bos, L, slot = chunk_coords(cu, chunk_seq, chunk_loc, i_c, C)
DT = q.dtype.element_ty
rows_c = tl.arange(0, C)
o_s = tl.arange(0, SC)
base = (i_c.to(tl.int64) * H + i_h) * C  # first scratch row of this (chunk, head)
"""

# the sub-chunk's own pairs (dqk_diag): "cols" walks them one step a program-wide [SC, BK] tile,
# step c taking key c's column of dq's pairs and query c's row of dk's, both reading one pair
# decay exp(bkq_i - bk_j) per element (clamped at 0: exact on causal pairs, which are the only
# nonzero scores in ddg); "cube" forms the [SC, SC, BK] fp32 cubes of diag_apply
_INTRA_DIAG = """
if DIAG_COLS:
    for c in range(0, SC):
        s_col = tl.load(ddg + (base + rows_i) * SC + c)  # [SC] da_dg[:, c]
        s_row = tl.load(ddg + (base + I * SC + c) * SC + o_s)  # [SC] da_dg[c, :]
        k_c = load_row(k, bos, I * SC + c, L, offs_k, i_h, H, K)  # [BK]
        bk_c = load_row(gk_cum, bos, I * SC + c, L, offs_k, i_h, H, K)  # [BK]
        q_c = load_row(q, bos, I * SC + c, L, offs_k, i_h, H, K) * scale  # [BK]
        bkq_c = load_row(gk_cum, bos, I * SC + c - QSHIFT, L, offs_k, i_h, H, K)  # [BK]
        b_dq += s_col[:, None] * k_c[None, :] * tl.exp(tl.minimum(bkqi - bk_c[None, :], 0.0))
        b_dki += s_row[:, None] * q_c[None, :] * tl.exp(tl.minimum(bkq_c[None, :] - bki, 0.0))
else:
    b_dq += diag_apply(da_dg, b_ki, bkqi, bki)
    b_dki += diag_apply(tl.trans(da_dg), b_qi, -bki, -bkqi)
"""

_INTRA_BODY = (
    """
rows_i = I * SC + o_s
last_i = tl.minimum(I * SC + SC, L) - 1  # the sub-chunk's last valid row
"""
    + SCRATCH_SCORES.strip("\n")
    + KEY_ROWS
    + key_intra(diag=False).strip("\n")
    + _INTRA_DIAG
    + ZERO_STEP_QK
    + """xq = b_qi * b_dq
store_rows(dqa, b_dq + dq_zs, bos, rows_i, L, offs_k, i_h, H, K)
store_rows(dka, b_dki + dk_zs, bos, rows_i, L, offs_k, i_h, H, K)
store_rows(xa, xq - b_ki * b_dki, bos, rows_i, L, offs_k, i_h, H, K)
if STORE_XQ:
    store_rows(xqa, xq, bos, rows_i, L, offs_k, i_h, H, K)
"""
)

_INTER_BODY = """
dq_in = tl.full([C, BK], 0.0, dtype=tl.float32)  # do h^T: queries reading the carried-in state
dk_st = tl.full([C, BK], 0.0, dtype=tl.float32)  # v dh^T: keys feeding the state handed on
st0 = tl.full([BK], 0.0, dtype=tl.float32)
for v0 in range(0, V, BV):
    offs_v = v0 + tl.arange(0, BV)
    h0 = load_state(hs, slot, i_h, offs_k, offs_v, H, K, V)  # [BK, BV]
    dh = load_state(dhs, slot, i_h, offs_k, offs_v, H, K, V)  # [BK, BV]
    b_do = load_rows(do, bos, rows_c, L, offs_v, i_h, H, V)  # [C, BV]
    b_v = load_rows(v, bos, rows_c, L, offs_v, i_h, H, V)  # [C, BV]
    st0 += tl.sum(h0 * dh, axis=1)
    dq_in += tl.dot(b_do.to(DT), tl.trans(h0.to(DT)), input_precision=PREC)
    dk_st += tl.dot(b_v.to(DT), tl.trans(dh.to(DT)), input_precision=PREC)
bk = load_rows(gk_cum, bos, rows_c, L, offs_k, i_h, H, K)  # [C, BK]
bkq = load_rows(gk_cum, bos, rows_c - QSHIFT, L, offs_k, i_h, H, K)  # [C, BK]
bk_last = load_row(gk_cum, bos, L - 1, L, offs_k, i_h, H, K)  # [BK]
st0 = st0 * tl.exp(bk_last)
b_q = load_rows(q, bos, rows_c, L, offs_k, i_h, H, K) * scale  # [C, BK]
b_k = load_rows(k, bos, rows_c, L, offs_k, i_h, H, K)  # [C, BK]
inter_q = tl.exp(bkq) * dq_in
store_rows(dq, (inter_q + load_rows(dqa, bos, rows_c, L, offs_k, i_h, H, K)) * scale, bos, rows_c, L, offs_k,
           i_h, H, K)
b_dks = tl.exp(tl.minimum(bk_last[None, :] - bk, 0.0)) * dk_st  # through the state handed on
store_rows(dk, load_rows(dka, bos, rows_c, L, offs_k, i_h, H, K) + b_dks, bos, rows_c, L, offs_k, i_h, H, K)
xq = b_q * inter_q
x = xq + load_rows(xa, bos, rows_c, L, offs_k, i_h, H, K)
y = tl.where(rows_c[:, None] == L - 1, 0.0, b_k * b_dks)  # the last row's state path reaches no row here
b_dg = tl.cumsum(x, axis=0, reverse=True) + st0[None, :] + tl.cumsum(y, axis=0) - y
if STORE_XQ:  # o_t reads S_{t-1}: the gate of step t does not reach o_t
    b_dg -= xq + load_rows(xqa, bos, rows_c, L, offs_k, i_h, H, K)
store_rows(dgk, b_dg, bos, rows_c, L, offs_k, i_h, H, K)
"""

BWD_DQK_SPLIT = f'''

@triton.jit
def chunk_bwd_da_key(do, v, da, dat, ddg, cu, chunk_seq, chunk_loc,
                     H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, SC: tl.constexpr,
                     BV: tl.constexpr, PREC: tl.constexpr):
    """chunk_bwd_da without a value decay (da_scores="full"). Grid (chunks, H).

    Every score is a cell of one product d = do v^T [C, C]; its blocks go to chunk_bwd_da's
    scratch layout: row i of da keeps the columns of earlier sub-chunks and the zero-step cell
    i - QSHIFT, row j of dat the columns of later sub-chunks and the cell j + QSHIFT (of d^T),
    and ddg the causal part of the row's own sub-chunk. All C rows are written.
    """
{at_depth(4, SCORES_PROGRAM)}
    d = tl.full([C, C], 0.0, dtype=tl.float32)  # d_ij = do_i . v_j
    for v0 in range(0, V, BV):
        offs_v = v0 + tl.arange(0, BV)
        b_do = load_rows(do, bos, rows_c, L, offs_v, i_h, H, V).to(DT)  # [C, BV]
        b_v = load_rows(v, bos, rows_c, L, offs_v, i_h, H, V).to(DT)  # [C, BV]
        d += tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
    r, c = rows_c[:, None], rows_c[None, :]
    first = (r // SC) * SC  # the first row of each row's sub-chunk
    offs = (base + r) * C + c
    tl.store(da + offs, tl.where((c < first) | (c == r - QSHIFT), d, 0.0))
    tl.store(dat + offs, tl.where((c >= first + SC) | (c == r + QSHIFT), tl.trans(d), 0.0))
    own = tl.where((c >= first) & (c < r - QSHIFT), d, 0.0)  # [C, C], zero outside the row's sub-chunk
    tl.store(ddg + (base + r) * SC + o_s[None, :], tl.sum(tl.reshape(own, (C, C // SC, SC)), axis=1))


@triton.jit
def chunk_bwd_dqk_intra(q, k, gk_cum, da, dat, ddg, dqa, dka, xa, xqa, cu, chunk_seq, chunk_loc, scale,
                        H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, SC: tl.constexpr,
                        BK: tl.constexpr, STORE_XQ: tl.constexpr, DIAG_COLS: tl.constexpr,
                        PREC: tl.constexpr):
    """dq, dk from pairs inside the chunk, for one sub-chunk's rows. Grid (chunks * C/SC, K-blocks, H).

    Writes fp32 scratch: dqa (intra dq + zero-step), dka (intra dk + zero-step), xa = q dqa' - k dka'
    (the primes without the zero-step pairs, which carry no decay), and xqa = q dqa' if STORE_XQ.
    """
    i_cs, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_k = i_k * BK + tl.arange(0, BK)
{at_depth(4, _SUB_CHUNK)}
    if I * SC < L:
{at_depth(8, _INTRA_BODY)}


@triton.jit
def chunk_bwd_dqk_inter(q, k, v, do, gk_cum, hs, dhs, dqa, dka, xa, xqa, dq, dk, dgk, cu, chunk_seq,
                        chunk_loc, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                        C: tl.constexpr, SC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                        STORE_XQ: tl.constexpr, PREC: tl.constexpr):
    """dq, dk and the key log-decay gradient of one chunk, K-block and head. Grid (K-blocks, chunks, H).

    The state terms for all C rows at once, the intra terms from chunk_bwd_dqk_intra's scratch.
    """
{at_depth(4, chunk_program("k"))}
{at_depth(4, _INTER_BODY)}
'''

_SCORES_BODY = (
    """
rows_i = I * SC + o_s
a_off = tl.full([SC, C], 0.0, dtype=tl.float32)  # scores against keys of earlier sub-chunks
a_dg = tl.full([SC, SC], 0.0, dtype=tl.float32)  # scores inside the sub-chunk
a_zs = tl.full([SC], 0.0, dtype=tl.float32)  # score of the zero-step pair (i, i - QSHIFT)
ref_row = I * SC - QSHIFT  # the sub-chunk's first query sees the decay of this row
for k0 in range(0, K, BK):
    offs_k = k0 + tl.arange(0, BK)
    b_q = load_rows(q, bos, rows_i, L, offs_k, i_h, H, K) * scale  # [SC, BK]
    b_k = load_rows(k, bos, rows_c, L, offs_k, i_h, H, K)  # [C, BK]
    a_zs += tl.sum(b_q * load_rows(k, bos, rows_i - QSHIFT, L, offs_k, i_h, H, K), axis=1)
    bkq = load_rows(gk_cum, bos, rows_i - QSHIFT, L, offs_k, i_h, H, K)  # [SC, BK]
    ref = load_row(gk_cum, bos, ref_row, L, offs_k, i_h, H, K)  # [BK]
    bk = load_rows(gk_cum, bos, rows_c, L, offs_k, i_h, H, K)  # [C, BK]
    q_r = (b_q * tl.exp(tl.minimum(bkq - ref[None, :], 0.0))).to(DT)  # rebased on ref: exponent <= 0
    k_r = (b_k * tl.exp(tl.minimum(ref[None, :] - bk, 0.0))).to(DT)  # exact for keys before the sub-chunk
    a_off += tl.dot(q_r, tl.trans(k_r), input_precision=PREC)
"""
    + textwrap.dedent(KEY_DIAG).strip("\n")
    + """
# two stores that never touch the same cell: the row block outside the sub-chunk's columns
# (earlier keys, a zero-step cell there, zeros for later keys), then the [SC, SC] block itself
zs = rows_c[None, :] == rows_i[:, None] - QSHIFT
outside = (rows_c[None, :] < I * SC) | (rows_c[None, :] >= I * SC + SC)
a_off = tl.where(rows_c[None, :] < rows_i[:, None] - QSHIFT, a_off, 0.0) + tl.where(zs, a_zs[:, None], 0.0)
offs = (base + rows_i[:, None]) * C + rows_c[None, :]
tl.store(a + offs, tl.where(rows_c[None, :] < I * SC, a_off, 0.0), mask=outside & (rows_i[:, None] < L))
a_dg = tl.where(o_s[None, :] < o_s[:, None] - QSHIFT, a_dg, 0.0)
a_dg += tl.where(o_s[None, :] == o_s[:, None] - QSHIFT, a_zs[:, None], 0.0)
offs_dg = (base + rows_i[:, None]) * C + I * SC + o_s[None, :]
tl.store(a + offs_dg, a_dg, mask=rows_i[:, None] < L)
"""
)

_OUT_BODY = """
b_o = tl.full([C, BV], 0.0, dtype=tl.float32)
for k0 in range(0, K, BK):  # queries reading the carried-in state
    offs_k = k0 + tl.arange(0, BK)
    b_q = load_rows(q, bos, rows_c, L, offs_k, i_h, H, K) * scale  # [C, BK]
    bkq = cum_gates(gk_cum, bos, rows_c - QSHIFT, L, offs_k, i_h, H, K, FUSED_CUMSUM)  # [C, BK]
    b_h = load_state(hs, slot, i_h, offs_k, offs_v, H, K, V).to(DT)  # [BK, BV]
    b_o += tl.dot((b_q * tl.exp(bkq)).to(DT), b_h, input_precision=PREC)
base = (i_c.to(tl.int64) * H + i_h) * C
b_a = tl.load(a + (base + rows_c[:, None]) * C + rows_c[None, :], mask=rows_c[:, None] < L, other=0.0)
b_v = load_rows(v, bos, rows_c, L, offs_v, i_h, H, V)  # [C, BV]
b_o += tl.dot(b_a.to(DT), b_v.to(DT), input_precision=PREC)
store_rows(o, b_o, bos, rows_c, L, offs_v, i_h, H, V)
"""

FWD_SPLIT = f'''

@triton.jit
def chunk_fwd_a(q, k, gk_cum, a, cu, chunk_seq, chunk_loc, scale,
                H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, SC: tl.constexpr,
                BK: tl.constexpr, BKD: tl.constexpr, PREC: tl.constexpr):
    """One sub-chunk's rows of the chunk's causal score matrix A [C, C], to fp32 scratch.
    Grid (chunks * C/SC, H)."""
    i_cs, i_h = tl.program_id(0), tl.program_id(1)
{at_depth(4, _SUB_CHUNK)}
    if I * SC < L:
{at_depth(8, _SCORES_BODY)}


@triton.jit
def chunk_fwd_o_split(q, k, v, gk_cum, hs, a, o, cu, chunk_seq, chunk_loc, scale,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, SC: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, FUSED_CUMSUM: tl.constexpr):
    """Outputs of one chunk, V-block and head from the carried-in state and chunk_fwd_a's scores.
    Grid (V-blocks, chunks, H). With FUSED_CUMSUM, gk_cum holds the raw log-gates (cum_gates)."""
{at_depth(4, chunk_program("v"))}
{at_depth(4, _OUT_BODY)}
'''
FWD_SPLIT += FWD_A_PAIRS  # fwd_mode="pairs": chunk_fwd_a_pairs in place of chunk_fwd_a, same module

# infer_wide: a chunk of C steps read out from its entry state and the scores of its two halves
# (chunk_fwd_a_pairs at chunks of SC = C / 2); the second half's scores against the first half's
# keys, the one block those miss, as a tensor-core product rebased on the first half's last row
_WIDE_OUT_BODY = """
c_s = tl.load(score_off + tl.load(chunk_seq + i_c)) + 2 * tl.load(chunk_loc + i_c)  # its first score chunk
first = rows_c < SC  # [C] the first half's rows
b_o = tl.full([C, BV], 0.0, dtype=tl.float32)
a_x = tl.full([C, C], 0.0, dtype=tl.float32)  # second-half queries against first-half keys
for k0 in range(0, K, BK):
    offs_k = k0 + tl.arange(0, BK)
    b_q = load_rows(q, bos, rows_c, L, offs_k, i_h, H, K) * scale  # [C, BK]
    bkq = load_rows(gk_cum, bos, rows_c - QSHIFT, L, offs_k, i_h, H, K)  # [C, BK]
    b_h = load_state(hs, slot, i_h, offs_k, offs_v, H, K, V).to(DT)  # [BK, BV]
    b_o += tl.dot((b_q * tl.exp(bkq)).to(DT), b_h, input_precision=PREC)
    # rebased on row SC - 1, the first half's last: later queries, keys up to it, exponents <= 0
    ref = load_row(gk_cum, bos, SC - 1, L, offs_k, i_h, H, K)  # [BK]
    q_r = tl.where(first[:, None], 0.0, b_q * tl.exp(tl.minimum(bkq - ref[None, :], 0.0)))
    rows_k = tl.where(first, rows_c, -1)  # the first half's keys (row -1 loads as zeros)
    bk = load_rows(gk_cum, bos, rows_k, L, offs_k, i_h, H, K)  # [C, BK]
    k_r = load_rows(k, bos, rows_k, L, offs_k, i_h, H, K) * tl.exp(tl.minimum(ref[None, :] - bk, 0.0))
    a_x += tl.dot(q_r.to(DT), tl.trans(k_r.to(DT)), input_precision=PREC)
# the halves' own scores, block-diagonal, from score chunks c_s and c_s + 1
half, r = rows_c // SC, rows_c % SC
p_a = (((c_s + half).to(tl.int64) * H + i_h) * SC + r)[:, None] * SC + r[None, :]
own = (half[:, None] == half[None, :]) & (rows_c[:, None] < L)
b_a = tl.load(a + p_a, mask=own, other=0.0) + a_x
b_v = load_rows(v, bos, rows_c, L, offs_v, i_h, H, V)  # [C, BV]
b_o += tl.dot(b_a.to(DT), b_v.to(DT), input_precision=PREC)
store_rows(o, b_o, bos, rows_c, L, offs_v, i_h, H, V)
"""

FWD_SPLIT += f'''

@triton.jit
def chunk_fwd_o_wide(q, k, v, gk_cum, hs, a, o, cu, chunk_seq, chunk_loc, score_off, scale,
                     H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, SC: tl.constexpr,
                     BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """Outputs of one chunk of C steps, V-block and head, when no gradient is needed
    (``infer_wide``): the state walk ran at chunks of C, chunk_fwd_a_pairs at chunks of SC = C / 2
    (its chunk map starts sequence n at score chunk ``score_off[n]``), both on the sums over C.
    Grid (V-blocks, chunks, H)."""
{at_depth(4, chunk_program("v"))}
{at_depth(4, _WIDE_OUT_BODY)}
'''

_DV_BODY = """
b_dv = tl.full([C, BV], 0.0, dtype=tl.float32)
for k0 in range(0, K, BK):  # keys feeding the state handed on
    offs_k = k0 + tl.arange(0, BK)
    b_k = load_rows(k, bos, rows_c, L, offs_k, i_h, H, K)  # [C, BK]
    bk = load_rows(gk_cum, bos, rows_c, L, offs_k, i_h, H, K)  # [C, BK]
    bk_last = load_row(gk_cum, bos, L - 1, L, offs_k, i_h, H, K)  # [BK]
    b_dh = load_state(dhs, slot, i_h, offs_k, offs_v, H, K, V).to(DT)  # [BK, BV]
    b_dv += tl.dot((b_k * tl.exp(tl.minimum(bk_last[None, :] - bk, 0.0))).to(DT), b_dh, input_precision=PREC)
base = (i_c.to(tl.int64) * H + i_h) * C
b_a = tl.load(a + (base + rows_c[:, None]) * C + rows_c[None, :], mask=rows_c[:, None] < L, other=0.0)
b_do = load_rows(do, bos, rows_c, L, offs_v, i_h, H, V)  # [C, BV]
b_dv += tl.dot(tl.trans(b_a).to(DT), b_do.to(DT), input_precision=PREC)
store_rows(dv, b_dv, bos, rows_c, L, offs_v, i_h, H, V)
"""

BWD_DV_SPLIT = f'''

@triton.jit
def chunk_bwd_dv_split(q, k, do, gk_cum, dhs, a, dv, cu, chunk_seq, chunk_loc,
                       H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, SC: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """dv of one chunk, V-block and head from the forward's scores A. Grid (V-blocks, chunks, H)."""
{at_depth(4, chunk_program("v"))}
{at_depth(4, _DV_BODY)}
'''
