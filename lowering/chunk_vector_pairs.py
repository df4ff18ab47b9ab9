"""``fwd_mode="pairs"`` (KEY decay): the chunk's score matrix A in one program per (chunk, head).

What it replaces: ``chunk_fwd_a`` of ``fwd_mode="split"`` (:mod:`scandsl.lowering.chunk_vector_split`)
runs one program per (chunk x sub-chunk, head) and builds a sub-chunk's own ``[SC, SC]`` block as
an ``[SC, SC, BKD]`` fp32 broadcast (``diag_scores``); it was 0.73 of gla's 1.21 ms forward on the
H100 (``bench/results/gpu_profile_host.json``). Its floor at B=4 T=4096 H=16 K=128 is far lower:
it must read q, k (bf16) and the cumulative gates (fp32), 268 MB, and write A (fp32, 34 MB at
C=32), ~0.10 ms at 3 TB/s; the diagonal blocks need ``T * K * SC`` = 537 M pair decays, ~0.13 ms
of the MUFU's exponentials at 16 a clock per SM (less when they are products, below).

How it is parallelised: ``chunk_fwd_a_pairs``, one program per (chunk, head), walks the chunk's
sub-chunks ``I`` (row blocks of A) and stores each ``[SC, C]`` row block once:

* keys of earlier sub-chunks: tensor-core products rebased on the row block's first query,
  ``q exp(bkq - ref)`` against ``k exp(ref - bk)``, both exponents ``<= 0`` (as ``chunk_fwd_a``);
* the sub-chunk's own keys: ``[SC, K]`` fp32 work per step, SC steps, with all of K in one tile
  (``KD`` = K padded), no ``[SC, SC, K]`` cube. ``fwd_diag`` picks how the pair decays are formed:

  - ``"exp"``: one key column ``j`` at a time, ``a_ij = sum_k q_ik k_jk exp(min(bkq_ik - bk_jk, 0))``
    (flash-linear-attention's ``chunk_gla_fwd_A_kernel_intra_sub_intra``, with the clamp);
  - ``"steps"``: one query row ``i`` at a time, keeping ``w_j = k_j exp(bkq_i - bk_j)`` for the
    sub-chunk's keys as a running product: from row ``i - 1`` to ``i`` every ``w_j`` takes one more
    step of decay ``exp(bkq_i - bkq_{i-1})`` and key ``i - QSHIFT`` joins with decay 1, so
    ``a_i = w . q_i``. SC exponentials per sub-chunk and column instead of SC^2; every factor is
    ``<= 1``, so the product can only underflow (to values below 1e-38), never overflow.

Both are exact for any decay strength, like the cube they replace: no factor is rebased on a row
that makes its exponent positive. The zero-step pair ``(i, i - QSHIFT)`` needs no path of its
own: its decay is ``exp(0)`` in either form (and in the rebased product when ``i - QSHIFT`` is the
previous sub-chunk's last key). ``chunk_fwd_o_split`` and the backward's ``chunk_bwd_dv_split``
read A as they read ``chunk_fwd_a``'s.
"""

from __future__ import annotations

from scandsl.lowering.chunk_vector_templates import at_depth

__all__ = ["FWD_A_PAIRS"]

# keys of earlier sub-chunks, rebased on the row block's first query (row I*SC - QSHIFT)
_EARLIER = """
a_off = tl.full([SC, C], 0.0, dtype=tl.float32)  # scores against keys of earlier sub-chunks
if I > 0:
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        b_q = load_rows(q, bos, rows_i, L, offs_k, i_h, H, K) * scale  # [SC, BK]
        bkq = load_rows(gk_cum, bos, rows_i - QSHIFT, L, offs_k, i_h, H, K)  # [SC, BK]
        ref = load_row(gk_cum, bos, I * SC - QSHIFT, L, offs_k, i_h, H, K)  # [BK]
        b_k = load_rows(k, bos, rows_c, L, offs_k, i_h, H, K)  # [C, BK]
        bk = load_rows(gk_cum, bos, rows_c, L, offs_k, i_h, H, K)  # [C, BK]
        q_r = (b_q * tl.exp(tl.minimum(bkq - ref[None, :], 0.0))).to(DT)  # exponent <= 0
        k_r = (b_k * tl.exp(tl.minimum(ref[None, :] - bk, 0.0))).to(DT)  # exact for keys before the sub-chunk
        a_off += tl.dot(q_r, tl.trans(k_r), input_precision=PREC)
"""

# the sub-chunk's own keys, SC steps of [SC, KD] fp32 work (module docstring)
_OWN = """
if STEPS:  # one query row at a time, the pair decays as running products
    b_ki = load_rows(k, bos, rows_i, L, offs_d, i_h, H, K)  # [SC, KD]
    w = tl.full([SC, KD], 0.0, dtype=tl.float32)  # k_j exp(bkq_i - bk_j); 0 for keys not yet reached
    a_t = tl.full([SC, SC], 0.0, dtype=tl.float32)  # scores inside the sub-chunk, transposed (rows j)
    prev = load_row(gk_cum, bos, I * SC - 1 - QSHIFT, L, offs_d, i_h, H, K)  # [KD]
    for ii in range(0, SC):
        cur = load_row(gk_cum, bos, I * SC + ii - QSHIFT, L, offs_d, i_h, H, K)  # [KD] decay row ii sees
        w = tl.where(o_s[:, None] == ii - QSHIFT, b_ki, w * tl.exp(tl.minimum(cur - prev, 0.0))[None, :])
        b_qi = load_row(q, bos, I * SC + ii, L, offs_d, i_h, H, K) * scale  # [KD]
        s = tl.sum(w * b_qi[None, :], axis=1)  # [SC] the sub-chunk's keys against row ii
        a_t += tl.where(o_s[None, :] == ii, s[:, None], 0.0)  # a column: s stays in its layout
        prev = cur
    a_dg = tl.trans(a_t)  # [SC, SC] rows i, columns j
else:  # one key column at a time, the pair decays as exponentials
    b_q = load_rows(q, bos, rows_i, L, offs_d, i_h, H, K) * scale  # [SC, KD]
    bkq = load_rows(gk_cum, bos, rows_i - QSHIFT, L, offs_d, i_h, H, K)  # [SC, KD]
    a_dg = tl.full([SC, SC], 0.0, dtype=tl.float32)  # scores inside the sub-chunk (rows i, columns j)
    for jj in range(0, SC):
        b_kj = load_row(k, bos, I * SC + jj, L, offs_d, i_h, H, K)  # [KD]
        bkj = load_row(gk_cum, bos, I * SC + jj, L, offs_d, i_h, H, K)  # [KD]
        s = tl.sum(b_q * b_kj[None, :] * tl.exp(tl.minimum(bkq - bkj[None, :], 0.0)), axis=1)  # [SC] column jj
        a_dg += tl.where(o_s[None, :] == jj, s[:, None], 0.0)
"""

# two stores that never touch the same cell: the row block outside the sub-chunk's columns
# (earlier keys, zeros for later ones), then the causal [SC, SC] block itself
_STORE = """
outside = (rows_c[None, :] < I * SC) | (rows_c[None, :] >= I * SC + SC)
offs = (base + rows_i[:, None]) * C + rows_c[None, :]
tl.store(a + offs, tl.where(rows_c[None, :] < I * SC, a_off, 0.0), mask=outside & (rows_i[:, None] < L))
a_dg = tl.where(o_s[None, :] <= o_s[:, None] - QSHIFT, a_dg, 0.0)
tl.store(a + (base + rows_i[:, None]) * C + I * SC + o_s[None, :], a_dg, mask=rows_i[:, None] < L)
"""

FWD_A_PAIRS = f'''

@triton.jit
def chunk_fwd_a_pairs(q, k, gk_cum, a, cu, chunk_seq, chunk_loc, scale,
                      H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, SC: tl.constexpr,
                      BK: tl.constexpr, KD: tl.constexpr, STEPS: tl.constexpr, PREC: tl.constexpr):
    """The chunk's causal score matrix A [C, C] to fp32 scratch, one row block of SC rows at a time:
        a_ij = sum_k q_ik k_jk exp(bkq_ik - bk_jk) for j <= i - QSHIFT, 0 after.
    Grid (chunks, H). Keys of earlier sub-chunks by rebased tensor-core products (BK-wide), the
    row block's own keys by SC steps over all of K (KD wide): running products if STEPS, else
    exponentials key column by key column.
    """
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos, L, slot = chunk_coords(cu, chunk_seq, chunk_loc, i_c, C)
    DT = q.dtype.element_ty
    rows_c = tl.arange(0, C)
    o_s = tl.arange(0, SC)
    offs_d = tl.arange(0, KD)
    base = (i_c.to(tl.int64) * H + i_h) * C  # first scratch row of this (chunk, head)
    for I in range(0, (L + SC - 1) // SC):
        rows_i = I * SC + o_s
{at_depth(8, _EARLIER)}
{at_depth(8, _OWN)}
{at_depth(8, _STORE)}
'''
