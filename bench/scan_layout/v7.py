"""A hand-written layout experiment for the scan forward (mamba, the Mamba-1 shape): two warps a
program, one per half of a 16-channel V-block, so the program's k and q rows are loaded once for
both (the generated kernel's one-warp programs each load them: 16 programs a head read the same
rows) and a v / dt row is a whole 32-byte sector (8 channels: half of one). Not used by the library.

The tile is [BT, KI, VW, KL, VL] (k = KL_lane * KI + ki, v = vw * VL + vl): Triton's default layout
puts the lanes on VL (8) and KL (4) and the warps on VW, so each thread holds what the generated
kernel's does (BT steps x 4 K of one channel). mamba's dt is read once (the value gate is the
decay's gate); no scale (1), the skip term D ⊙ x. Limits: T a multiple of BT, V of BV, K = 16;
no varlen, initial or final state, checkpoints.

Measured slower (H100, 2026-11-24 14:17 UTC, ``bench/results/gpu_ab_scan_layout_run4.json``): the
generated kernel 0.296 ms, this one 0.342 at BT=32 BV=16 (two warps), 0.379 at BT=16, 0.809 at
BV=32 (four warps), though its sm_90 build issues fewer instructions a block (1387 against 1430):
the two warps' shared operands cost block-wide barriers (11 a block against 5).
"""

import triton
import triton.language as tl


@triton.jit
def compose(a_first, u_first, a_then, u_then):
    return a_then * a_first, a_then * u_first + u_then


@triton.jit
def scan_fwd_kernel(
    q, k, v, vg, g, gk, gv, A, D, h0, o, ht, hc, cu_seqlens, chunk_offsets, scale, T, R,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, CT: tl.constexpr,
    USE_H0: tl.constexpr, STORE_HT: tl.constexpr, SAVE_CKPT: tl.constexpr, IS_VARLEN: tl.constexpr,
    SCALED: tl.constexpr, VW: tl.constexpr = 2,
):  # fmt: skip
    VL: tl.constexpr = BV // VW
    KL: tl.constexpr = 4
    KI: tl.constexpr = BK // KL
    i_v, i_nh = tl.program_id(0), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos = i_n.to(tl.int64) * T
    NT = tl.cdiv(T, BT)
    o_t = tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, VW)[:, None] * VL + tl.arange(0, VL)[None, :]  # [VW, VL]
    o_k = tl.arange(0, KL)[None, :] * KI + tl.arange(0, KI)[:, None]  # [KI, KL]
    p_A = (i_h * V + o_v[None, :, None, :]) * K + o_k[:, None, :, None]  # [KI, VW, KL, VL]
    b_A2 = tl.load(A + p_A) * 1.4426950408889634
    b_D = tl.load(D + i_h * V + o_v)  # [VW, VL]
    b_h = tl.zeros([1, KI, VW, KL, VL], dtype=tl.float32)
    r = bos + o_t
    n_v = tl.load(v + (r[:, None, None] * H + i_h) * V + o_v[None, :, :])
    n_gv = tl.load(gv + (r[:, None, None] * H + i_h) * V + o_v[None, :, :])
    n_k = tl.load(k + (r[:, None, None] * H + i_h) * K + o_k[None, :, :])
    n_q = tl.load(q + (r[:, None, None] * H + i_h) * K + o_k[None, :, :])
    for i_t in range(0, NT):
        r_t = bos + i_t * BT + o_t
        b_v = n_v.to(tl.float32)
        b_gv = n_gv.to(tl.float32)
        b_k = n_k
        b_q = n_q
        r = bos + (i_t + 1) * BT + o_t
        m = (i_t + 1) * BT + o_t < T
        n_v = tl.load(v + (r[:, None, None] * H + i_h) * V + o_v[None, :, :], mask=m[:, None, None], other=0.0)
        n_gv = tl.load(gv + (r[:, None, None] * H + i_h) * V + o_v[None, :, :], mask=m[:, None, None], other=0.0)
        n_k = tl.load(k + (r[:, None, None] * H + i_h) * K + o_k[None, :, :], mask=m[:, None, None], other=0.0)
        n_q = tl.load(q + (r[:, None, None] * H + i_h) * K + o_k[None, :, :], mask=m[:, None, None], other=0.0)
        b_a = tl.exp2(b_gv[:, None, :, None, :] * b_A2[None, :, :, :, :])  # [BT, KI, VW, KL, VL]
        b_w = b_v * b_gv  # [BT, VW, VL]
        b_u = b_k[:, :, None, :, None].to(tl.float32) * b_w[:, None, :, None, :]
        b_u0 = tl.where((o_t == 0)[:, None, None, None, None], b_u + b_a * b_h, b_u)
        _, b_hs = tl.associative_scan((b_a, b_u0), 0, compose)
        b_o = tl.sum(tl.sum(b_hs * b_q[:, :, None, :, None].to(tl.float32), axis=1), axis=2)  # KI in-thread, then KL
        if SCALED:
            b_o = b_o * scale
        b_o += b_D[None, :, :] * b_v
        tl.store(o + (r_t[:, None, None] * H + i_h) * V + o_v[None, :, :], b_o.to(o.dtype.element_ty))
        b_h = tl.sum(tl.where((o_t == BT - 1)[:, None, None, None, None], b_hs, -0.0), axis=0, keep_dims=True)
