"""``fwd_mode="pairs"`` (KEY decay): the chunk's score matrix A in one program per (chunk, head).

What it replaces: ``chunk_fwd_a`` of ``fwd_mode="split"`` (:mod:`scandsl.lowering.chunk_vector_split`)
runs one program per (chunk x sub-chunk, head) and builds a sub-chunk's own ``[SC, SC]`` block as
an ``[SC, SC, BKD]`` fp32 broadcast (``diag_scores``); it was 0.73 of gla's 1.21 ms forward on the
H100 (``bench/results/gpu_profile_host.json``). Its floor at B=4 T=4096 H=16 K=128 is far lower:
it must read q, k (bf16) and the cumulative gates (fp32), 268 MB, and write A (fp32, 34 MB at
C=32), ~0.10 ms at 3 TB/s; the diagonal blocks need ``T * K * SC`` = 537 M pair exponentials in a
``[SC, SC]`` square, about half of them causal: 0.13 ms (0.07 ms for the causal half) at the
MUFU's 16 a clock per SM and 1.98 GHz on 132 SMs.

How it is parallelised: ``chunk_fwd_a_pairs``, one program per (chunk, head), walks the chunk's
sub-chunks ``I`` (row blocks of A) and stores each ``[SC, C]`` row block once:

* keys of earlier sub-chunks: tensor-core products rebased on the row block's first query,
  ``q exp(bkq - ref)`` against ``k exp(ref - bk)``, both exponents ``<= 0`` (as ``chunk_fwd_a``);
* every row's own sub-chunk (the diagonal blocks), all sub-chunks of the chunk at once, with all of
  K in one tile by default (``KD`` = ``pairs_BK``, K padded; narrower slices are walked in turn,
  untimed) and no ``[SC, SC, K]`` cube: a step gives every row one
  (query, key) pair, ``s = sum_k q_ik k_jk exp(min(bkq_ik - bk_jk, 0))`` over a ``[C, KD]`` tile
  whose key rows are gathered (flash-linear-attention's ``chunk_gla_fwd_A_kernel_intra_sub_intra``
  walks key columns the same way, one sub-chunk a program). ``fwd_diag`` picks the walk:

  - ``"cols"``: SC steps, step ``jj`` pairing every row with key ``jj`` of its sub-chunk; half the
    pairs are above the diagonal and masked;
  - ``"fold"``: SC / 2 steps over the triangle folded in two: at step ``jj`` row slot ``r`` takes
    (row ``r``, key ``jj``) if ``r >= jj``, else (row ``SC-1-r``, key ``SC-1-jj``), so a step's
    exponentials are nearly all causal pairs; the two halves are stored with their own row
    addressing, and the right half's diagonal (zero-step pairs when ``QSHIFT == 0``, decay 1)
    without exponentials.

Both are exact for any decay strength, like the cube they replace: every exponent is a pair's own
decay, clamped at 0, never rebased on a row that makes it positive. The zero-step pair
``(i, i - QSHIFT)`` needs no path of its own: its decay is ``exp(0)`` (in the rebased product too,
when ``i - QSHIFT`` is the previous sub-chunk's last key). ``chunk_fwd_o_split`` and the
backward's ``chunk_bwd_dv_split`` read A as they read ``chunk_fwd_a``'s.

Measured (H100, Triton 3.6, gla at the shape above, C=32 SC=16, bf16, ``bench/gpu_ab_gla_fwd.py``,
``bench/results/gpu_ab_gla_fwd_run2.json``): 0.41 ms with ``"fold"`` at 4 warps, against 0.69 ms
for ``chunk_fwd_a`` and 0.39 ms for flash-linear-attention's two score kernels (at C=64); ``"cols"``
0.46 ms, 8 warps slower for both. So still ~3x its floor: the fold walk holds ~220 registers a
thread at 4 warps (an sm_90 build with Triton 3.9), two programs an SM, and each step's gathered
loads wait on the cache. A first try, one program walking its sub-chunks one after another with
``[SC, K]`` steps (exponentials, or running products of the step decays), was no faster than
``chunk_fwd_a`` (0.49-0.70 ms, ``bench/results/gpu_ab_gla_fwd_run1.json``): too little work per
step to hide a step's latency.

``fwd_cumsum="fused"`` (untimed): the kernel takes the raw log-gates, sums the chunk's ``[C, BK]``
tile in registers (``cum_gates``) and gathers the rows a step pairs from it (``gate_rows``,
``tl.gather``) instead of loading them. In a local sm_90 build (Triton 3.9, gla's tiles) that costs
registers: 161 a thread against 98, the gathers lowered to warp shuffles and shared memory; the
state and output kernels, which only cumulate whole chunks, need none (138 against 168, 114
against 104). Whether the pass it saves pays for that is for the GPU A/B (``bench/gpu_ab_gla_fwd.py``).
"""

from __future__ import annotations

from scandsl.lowering.chunk_vector_shared import scores_program
from scandsl.lowering.chunk_vector_templates import at_depth

__all__ = ["FWD_A_PAIRS"]

# row block I against keys of earlier sub-chunks, rebased on its first query (row I*SC - QSHIFT)
_EARLIER = """
a_off = tl.full([SC, C], 0.0, dtype=tl.float32)  # scores against keys of earlier sub-chunks
if I > 0:
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        b_q = load_rows(q, bos, rows_i, L, offs_k, i_h, H, K) * scale  # [SC, BK]
        # with FUSED_CUMSUM gk_cum holds raw log-gates: the chunk's sums, query rows and ref gathered
        bk = cum_gates(gk_cum, bos, rows_c, L, offs_k, i_h, H, K, FUSED_CUMSUM)  # [C, BK]
        bkq = gate_rows(bk, gk_cum, bos, rows_i - QSHIFT, L, offs_k, i_h, H, K, FUSED_CUMSUM)  # [SC, BK]
        ref = gate_row(bk, gk_cum, bos, I * SC - QSHIFT, L, offs_k, i_h, H, K, FUSED_CUMSUM)  # [BK]
        b_k = load_rows(k, bos, rows_c, L, offs_k, i_h, H, K)  # [C, BK]
        q_r = (b_q * tl.exp(tl.minimum(bkq - ref[None, :], 0.0))).to(DT)  # exponent <= 0
        k_r = (b_k * tl.exp(tl.minimum(ref[None, :] - bk, 0.0))).to(DT)  # exact for keys before the sub-chunk
        a_off += tl.dot(q_r, tl.trans(k_r), input_precision=PREC)
# the row block outside its own sub-chunk's columns: earlier keys, zeros for later ones
outside = (rows_c[None, :] < I * SC) | (rows_c[None, :] >= I * SC + SC)
offs = (base + rows_i[:, None]) * C + rows_c[None, :]
tl.store(a + offs, tl.where(rows_c[None, :] < I * SC, a_off, 0.0), mask=outside & (rows_i[:, None] < L))
"""

# every row's block inside its own sub-chunk, all sub-chunks at once: [C, KD] fp32 work a step
_OWN = """
cols = first[:, None] + o_s[None, :]  # [C, SC] the columns of each row's own sub-chunk
causal = o_s[None, :] <= r[:, None] - QSHIFT  # [C, SC]
if FOLD:  # SC / 2 steps: slot r takes row r against key jj, or row SC-1-r against key SC-1-jj
    a_lo = tl.full([C, SC], 0.0, dtype=tl.float32)  # rows r, the left half of the columns
    a_hi = tl.full([C, SC], 0.0, dtype=tl.float32)  # rows SC-1-r, the right half
    for d0 in tl.static_range(0, K, KD):  # K in slices of KD (one slice by default)
        offs_d = d0 + tl.arange(0, KD)
        if FUSED_CUMSUM:  # gk_cum holds raw log-gates: the chunk's sums, for gate_rows
            cum = cum_gates(gk_cum, bos, rows_c, L, offs_d, i_h, H, K, True)  # [C, KD]
        else:
            cum = 0.0  # not read: the steps load chunk_local_cumsum's output
        for jj in range(0, SC // 2):
            low = r >= jj  # [C]
            i_row = first + tl.where(low, r, SC - 1 - r)  # [C] the query row slot r takes at this step
            j_row = first + tl.where(low, jj, SC - 1 - jj)  # [C] and its key row
            s = pair_scores(load_rows(q, bos, i_row, L, offs_d, i_h, H, K),
                            gate_rows(cum, gk_cum, bos, i_row - QSHIFT, L, offs_d, i_h, H, K, FUSED_CUMSUM),
                            load_rows(k, bos, j_row, L, offs_d, i_h, H, K),
                            gate_rows(cum, gk_cum, bos, j_row, L, offs_d, i_h, H, K, FUSED_CUMSUM)) * scale
            a_lo += tl.where(o_s[None, :] == jj, s[:, None], 0.0)  # right only where low: masked below
            a_hi += tl.where(o_s[None, :] == SC - 1 - jj, s[:, None], 0.0)  # right only where not low
    tl.store(a + (base + rows_c[:, None]) * C + cols, tl.where(causal, a_lo, 0.0),
             mask=(o_s[None, :] < SC // 2) & (rows_c[:, None] < L))
    rows_f = first + SC - 1 - r  # [C] the row slot r holds in a_hi, whose pairs are all j < i
    r_f = SC - 1 - r
    tl.store(a + (base + rows_f[:, None]) * C + cols, tl.where(o_s[None, :] < r_f[:, None], a_hi, 0.0),
             mask=(o_s[None, :] >= SC // 2) & (o_s[None, :] != r_f[:, None]) & (rows_f[:, None] < L))
    # the diagonal of the right half: the zero-step pair (its decay exp(0)) if QSHIFT == 0
    zs = tl.full([C], 0.0, dtype=tl.float32)  # q_i . k_i
    for d0 in tl.static_range(0, K, KD):
        offs_d = d0 + tl.arange(0, KD)
        b_k = load_rows(k, bos, rows_c, L, offs_d, i_h, H, K)  # [C, KD]
        zs += tl.sum(load_rows(q, bos, rows_c, L, offs_d, i_h, H, K) * b_k, axis=1) * scale
    if QSHIFT == 1:  # o_t reads S_{t-1}: the diagonal is not causal
        zs = zs * 0.0
    tl.store(a + (base + rows_c) * C + rows_c, zs, mask=(r >= SC // 2) & (rows_c < L))
else:  # SC steps, one key column of every sub-chunk at a time
    a_dg = tl.full([C, SC], 0.0, dtype=tl.float32)
    for d0 in tl.static_range(0, K, KD):  # K in slices of KD (one slice by default)
        offs_d = d0 + tl.arange(0, KD)
        if FUSED_CUMSUM:  # gk_cum holds raw log-gates: the chunk's sums, for gate_rows
            cum = cum_gates(gk_cum, bos, rows_c, L, offs_d, i_h, H, K, True)  # [C, KD]
        else:
            cum = 0.0  # not read: the steps load chunk_local_cumsum's output
        b_q = load_rows(q, bos, rows_c, L, offs_d, i_h, H, K)  # [C, KD]
        bkq = cum_gates(gk_cum, bos, rows_c - QSHIFT, L, offs_d, i_h, H, K, FUSED_CUMSUM)  # [C, KD]
        for jj in range(0, SC):
            b_kj = load_rows(k, bos, first + jj, L, offs_d, i_h, H, K)  # [C, KD] key jj of every sub-chunk
            bkj = gate_rows(cum, gk_cum, bos, first + jj, L, offs_d, i_h, H, K, FUSED_CUMSUM)  # [C, KD]
            s = pair_scores(b_q, bkq, b_kj, bkj) * scale  # [C]
            a_dg += tl.where(o_s[None, :] == jj, s[:, None], 0.0)
    tl.store(a + (base + rows_c[:, None]) * C + cols, tl.where(causal, a_dg, 0.0),
             mask=rows_c[:, None] < L)
"""

FWD_A_PAIRS = f'''

@helper
def pair_scores(b_q, bkq, b_k, bk):
    """[R]: s[r] = sum_d b_q[r, d] b_k[r, d] exp(min(bkq[r, d] - bk[r, d], 0)), row r one (query, key) pair."""
    return tl.sum(b_q * b_k * tl.exp(tl.minimum(bkq - bk, 0.0)), axis=1)


@triton.jit
def chunk_fwd_a_pairs(q, k, gk_cum, a, cu, chunk_seq, chunk_loc, scale,
                      H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, SC: tl.constexpr,
                      BK: tl.constexpr, KD: tl.constexpr, FOLD: tl.constexpr, PREC: tl.constexpr,
                      FUSED_CUMSUM: tl.constexpr):
    """The chunk's causal score matrix A [C, C] to fp32 scratch:
        a_ij = sum_k q_ik k_jk exp(bkq_ik - bk_jk) for j <= i - QSHIFT, 0 after.
    Grid (chunks, H). Row block by row block, the keys of earlier sub-chunks by rebased
    tensor-core products (BK-wide); then the blocks inside every sub-chunk at once, one pair per
    row and step over a KD-wide slice of K: SC steps, or SC / 2 if FOLD. With FUSED_CUMSUM, gk_cum
    holds the raw log-gates: each K-slice sums the chunk's once and gathers the rows it needs.
    """
{at_depth(4, scores_program("q"))}
    r = rows_c % SC  # [C] each row's place in its sub-chunk
    first = rows_c - r  # [C] and its sub-chunk's first row
    for I in range(0, (L + SC - 1) // SC):
        rows_i = I * SC + o_s
{at_depth(8, _EARLIER)}
{at_depth(4, _OWN)}
'''
