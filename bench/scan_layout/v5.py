"""A hand-written layout experiment for the scan forward (mamba, the Mamba-1 shape), kept with its
measurements; not used by the library. Measured slower than the generated kernel.

The generated kernel's tile is [BT, BK, BV]: Triton's default layout puts 8 lanes on V and 4 on K,
so each thread holds 32 steps x 4 K of one channel, and every state element needs its own k and q
value (moved through shared memory, widened from bf16 one by one: ~2 of its ~11 instructions per
state element). Here the tile is [BT, VI, 2, KP, VL] (k = 2 kp + kh): lanes still take VL and KP,
but a thread keeps VI channels and both halves of a bf16 pair, and k and q are loaded as int32
pairs widened by one integer op each (``x << 16``, ``x & 0xffff0000``).

sm_90 builds (``bench/gpu_ab_scan_layout.py --sass``, ``bench/results/aot_sass_scan_layout.json``):
per exp2 11.37 instructions for the generated kernel, 10.23 here at VI=1, 8.94 at VI=2 (BV=16),
8.41 at VI=4 (BV=32). Timed on an H100 (``gpu_ab_scan_layout_run1.json``): 0.316 ms generated,
0.339 VI=1, 0.405 VI=2, 0.588 VI=4: fewer instructions, slower (more shared-memory stalls at VI=1;
half / a quarter of the programs at VI=2 / 4). Limits: T a multiple of BT, V of BV; no varlen,
initial or final state, checkpoints.
"""

import triton
import triton.language as tl


@triton.jit
def compose(a_first, u_first, a_then, u_then):
    return a_then * a_first, a_then * u_first + u_then


@triton.jit
def bf16_pairs(p, mask, HAS_PAIRS: tl.constexpr):
    """Load bf16 pairs as int32 and widen: (even, odd) fp32 halves, one integer op each."""
    x = tl.load(p, mask=mask, other=0)
    lo = (x << 16).to(tl.float32, bitcast=True)
    hi = (x & -65536).to(tl.float32, bitcast=True)
    return lo, hi


@triton.jit
def scan_fwd_kernel(
    q,
    k,
    v,
    vg,
    g,
    gk,
    gv,
    A,
    D,
    h0,
    o,
    ht,
    hc,
    cu_seqlens,
    chunk_offsets,
    scale,
    T,
    R,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    CT: tl.constexpr,
    USE_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
    SAVE_CKPT: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    VI: tl.constexpr = 2,
    SCALED: tl.constexpr = False,
):
    """tile [BT, VI, 2, KP, VL]: k = 2 kp + kh; lanes take VL and KP; a thread keeps VI channels and both halves."""
    VL: tl.constexpr = BV // VI
    KP: tl.constexpr = BK // 2
    i_v, i_nh = tl.program_id(0), tl.program_id(2)  # one K-block: BK = K
    i_n, i_h = i_nh // H, i_nh % H
    bos = i_n.to(tl.int64) * T
    T_n = T
    NT_n = tl.cdiv(T_n, BT)
    o_t = tl.arange(0, BT)
    o_kp = tl.arange(0, KP)
    o_kh = tl.arange(0, 2)
    o_v = i_v * BV + tl.arange(0, VI)[:, None] * VL + tl.arange(0, VL)[None, :]  # [VI, VL]
    kk = 2 * o_kp[None, :] + o_kh[:, None]  # [2, KP]
    p_A = (i_h * V + o_v[:, None, None, :]) * K + kk[None, :, :, None]  # [VI, 2, KP, VL]
    b_A2 = tl.load(A + p_A) * 1.4426950408889634
    b_D = tl.load(D + i_h * V + o_v)  # [VI, VL]
    b_h = tl.zeros([1, VI, 2, KP, VL], dtype=tl.float32)
    ki = k.to(tl.pointer_type(tl.int32), bitcast=True)
    qi = q.to(tl.pointer_type(tl.int32), bitcast=True)
    sel = (o_kh == 0)[None, None, :, None, None]
    r = bos + o_t
    m = o_t < T_n
    n_v = tl.load(v + (r[:, None, None] * H + i_h) * V + o_v[None, :, :])
    n_vg = tl.load(vg + (r[:, None, None] * H + i_h) * V + o_v[None, :, :])
    n_gv = tl.load(gv + (r[:, None, None] * H + i_h) * V + o_v[None, :, :])
    n_k = tl.load(ki + (r[:, None] * H + i_h) * KP + o_kp[None, :], mask=m[:, None], other=0)
    n_q = tl.load(qi + (r[:, None] * H + i_h) * KP + o_kp[None, :], mask=m[:, None], other=0)
    for i_t in range(0, NT_n):
        r_t = bos + i_t * BT + o_t
        b_v = n_v.to(tl.float32)
        b_vg = n_vg.to(tl.float32)
        b_gv = n_gv.to(tl.float32)
        b_k = n_k
        b_q = n_q
        r = bos + (i_t + 1) * BT + o_t
        m = (i_t + 1) * BT + o_t < T_n
        n_v = tl.load(
            v + (r[:, None, None] * H + i_h) * V + o_v[None, :, :], mask=m[:, None, None], other=0.0
        )
        n_vg = tl.load(
            vg + (r[:, None, None] * H + i_h) * V + o_v[None, :, :], mask=m[:, None, None], other=0.0
        )
        n_gv = tl.load(
            gv + (r[:, None, None] * H + i_h) * V + o_v[None, :, :], mask=m[:, None, None], other=0.0
        )
        n_k = tl.load(ki + (r[:, None] * H + i_h) * KP + o_kp[None, :], mask=m[:, None], other=0)
        n_q = tl.load(qi + (r[:, None] * H + i_h) * KP + o_kp[None, :], mask=m[:, None], other=0)
        b_k5 = b_k[:, None, None, :, None]
        b_k5 = tl.where(
            sel, (b_k5 << 16).to(tl.float32, bitcast=True), (b_k5 & -65536).to(tl.float32, bitcast=True)
        )
        b_q5 = b_q[:, None, None, :, None]
        b_q5 = tl.where(
            sel, (b_q5 << 16).to(tl.float32, bitcast=True), (b_q5 & -65536).to(tl.float32, bitcast=True)
        )
        b_a = tl.exp2(b_gv[:, :, None, None, :] * b_A2[None, :, :, :, :])  # [BT, VI, 2, KP, VL]
        b_w = b_v * b_vg  # [BT, VI, VL]
        b_u = b_k5 * b_w[:, :, None, None, :]
        b_u0 = tl.where((o_t == 0)[:, None, None, None, None], b_u + b_a * b_h, b_u)
        _, b_hs = tl.associative_scan((b_a, b_u0), 0, compose)
        b_o = tl.sum(tl.sum(b_hs * b_q5, axis=2), axis=2)  # the halves in-thread first, then KP
        if SCALED:
            b_o = b_o * scale
        b_o += b_D[None, :, :] * b_v
        tl.store(o + (r_t[:, None, None] * H + i_h) * V + o_v[None, :, :], b_o.to(o.dtype.element_ty))
        b_h = tl.sum(tl.where((o_t == BT - 1)[:, None, None, None, None], b_hs, -0.0), axis=0, keep_dims=True)
