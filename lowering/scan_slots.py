"""The named slots of the scan kernels: the lines a core signature changes.

Each function returns Triton source text (unindented; the templates in
:mod:`scandsl.lowering.scan_source` indent it) for one slot. Tiles are ``[BT, BK, BV]``
(time, key, value; value fastest, so Triton's default layout puts lanes on V and keeps most of
K inside a thread: the read-out's sum over K then needs few shuffles). Names the slots share:

- ``b_a``: the step factors ``Λ_t`` of the block's rows (1 on padded rows);
  ``b_a1``: ``Λ_{t+1}`` for the backward's adjoint scan;
- ``b_u``: the step inputs ``U_t`` (0 on padded rows);
- ``b_hs``: the states ``S_t`` of the block's rows, ``b_h``: the state entering the block ``[BK, BV]``;
- ``b_dhs``: ``dL/dS_t``; ``b_dl``: ``dL/d log Λ_t`` (elementwise).

Row masks: ``m_t`` (step exists), ``m_t1`` (step ``t+1`` exists and lies in this block).
"""

from __future__ import annotations

from scandsl._core import CoreSig, Decay, Readout

__all__ = [
    "static_loads",
    "decay",
    "step_input",
    "fwd_readout",
    "bwd_cotangent",
    "bwd_dk",
    "bwd_dq",
    "bwd_carry_extra",
    "bwd_decay_grad",
    "bwd_static_init",
    "bwd_static_store",
]

_FULL = "(BT, BK, BV)"
_LOG2E = "1.4426950408889634"


def _rows(width: str, lane: str, rows: str = "r_t") -> str:
    """Offsets of a ``[BT, B*]`` tile of a ``[B*T, H, D]`` tensor."""
    return f"({rows}[:, None] * H + i_h) * {width} + {lane}[None, :]"


def _load_rows(ptr: str, width: str, lane: str, rows: str, mask: str, scale: str = "") -> str:
    m_lane = "m_k" if lane == "o_k" else "m_v"
    return (
        f"tl.load({ptr} + {_rows(width, lane, rows)}, mask={mask}[:, None] & {m_lane}[None, :], "
        f"other=0.0).to(tl.float32){scale}"
    )


def static_loads(sig: CoreSig) -> str:
    """Time-invariant operands, loaded once per program (``[BK, BV]`` tiles of ``[H, V, K]``)."""
    lines = []
    if sig.decay is Decay.CHANNEL:
        lines.append("b_A = tl.load(A + p_hkv, mask=m_s, other=0.0).to(tl.float32)  # [BK, BV]")
    if sig.decay is Decay.CHANNEL and not sig.decay_static:
        lines.append(f"b_A2 = b_A * {_LOG2E}  # exp(gv A) = exp2(gv A log2 e): one multiply less a step")
    if sig.decay_static:
        lines.append("b_gvS = tl.load(gv + i_h * V + o_v, mask=m_v, other=0.0).to(tl.float32)  # [BV]")
        lines.append("b_aS = tl.exp(b_gvS[None, :] * b_A)  # [BK, BV]: a static gate, one exp per program")
    if sig.key_static:
        lines.append("b_kS = tl.load(k + p_hkv, mask=m_s, other=0.0).to(tl.float32)  # [BK, BV]")
    if sig.query_static:
        lines.append("b_qS = tl.load(q + p_hkv, mask=m_s, other=0.0).to(tl.float32) * scale  # [BK, BV]")
    return "\n".join(lines) or "pass  # no time-invariant operands"


def decay(sig: CoreSig, out: str, rows: str, mask: str) -> str:
    """``{out} = Λ`` on rows ``rows`` as a ``[BT, BK, BV]`` tile; masked rows load log 0, so Λ = 1.

    Leaves the loaded log-gates in ``b_g{s}`` / ``b_gk{s}`` / ``b_gv{s}`` (``s`` = ``out``'s suffix).
    """
    s = out[len("b_a") :]
    d = sig.decay
    if d is Decay.NONE:
        return f"{out} = tl.full({_FULL}, 1.0, tl.float32)"
    if d is Decay.CHANNEL and sig.decay_static:
        return f"{out} = tl.broadcast_to(tl.where({mask}[:, None, None], b_aS[None, :, :], 1.0), {_FULL})"
    lines = []
    if d is Decay.SCALAR:
        lines.append(f"b_g{s} = tl.load(g + {rows} * H + i_h, mask={mask}, other=0.0).to(tl.float32)  # [BT]")
    if d in (Decay.KEY, Decay.OUTER):
        lines.append(f"b_gk{s} = {_load_rows('gk', 'K', 'o_k', rows, mask)}  # [BT, BK]")
    if d in (Decay.VALUE, Decay.OUTER, Decay.CHANNEL):
        lines.append(f"b_gv{s} = {_load_rows('gv', 'V', 'o_v', rows, mask)}  # [BT, BV]")
    expr = {
        Decay.SCALAR: f"tl.broadcast_to(tl.exp(b_g{s})[:, None, None], {_FULL})",
        Decay.KEY: f"tl.broadcast_to(tl.exp(b_gk{s})[:, :, None], {_FULL})",
        Decay.VALUE: f"tl.broadcast_to(tl.exp(b_gv{s})[:, None, :], {_FULL})",
        Decay.OUTER: f"tl.exp(b_gk{s})[:, :, None] * tl.exp(b_gv{s})[:, None, :]",
        # the fused gate: one exp per (step, state, channel), Mamba's exp(dt ⊗ A)
        Decay.CHANNEL: f"tl.exp2(b_gv{s}[:, None, :] * b_A2[None, :, :])",
    }[d]
    lines.append(f"{out} = {expr}  # [BT, BK, BV]")
    return "\n".join(lines)


def step_input(sig: CoreSig) -> str:
    """``b_u = U_t`` on the block's rows (``b_v`` is loaded; padded rows give 0)."""
    if sig.key_static:
        return "b_u = b_kS[None, :, :] * b_v[:, None, :]  # [BT, BK, BV], U_t[v, k] = v_t[v] B[v, k]"
    return (
        f"b_k = {_load_rows('k', 'K', 'o_k', 'r_t', 'm_t')}  # [BT, BK]\n"
        "b_u = b_k[:, :, None] * b_v[:, None, :]  # [BT, BK, BV], U_t = v_t k_t^T"
    )


def _q_rows(rows: str, mask: str, out: str) -> str:
    return f"{out} = {_load_rows('q', 'K', 'o_k', rows, mask, ' * scale')}  # [BT, BK]"


_Q0 = (
    "b_q0 = tl.load(q + ((bos + i_t * BT) * H + i_h) * K + o_k, mask=m_k, other=0.0)"
    ".to(tl.float32) * scale  # [BK], q of the block's first step"
)


def _readout(sig: CoreSig, q: str) -> str:
    """``o[v] = Σ_k S_t[v, k] q[k]`` over the ``[BT, BK, BV]`` state tile."""
    q_tile = "b_qS[None, :, :]" if sig.query_static else f"{q}[:, :, None]"
    return f"tl.sum(b_hs * {q_tile}, axis=1)"


def fwd_readout(sig: CoreSig) -> str:
    """Store the block's outputs into ``o_base`` (this K-block's partial when NK > 1)."""
    store = "tl.store(o_base + {p}, b_o.to(o.dtype.element_ty), mask={m}[:, None] & m_v[None, :])"
    if sig.readout is Readout.AFTER:
        lines = [] if sig.query_static else [_q_rows("r_t", "m_t", "b_q")]
        lines += [
            f"b_o = {_readout(sig, 'b_q')}  # [BT, BV], o_t = S_t q_t",
            store.format(p=_rows("V", "o_v"), m="m_t"),
        ]
        return "\n".join(lines)
    # BEFORE: o_(t+1) = S_t q_(t+1), so each row serves the next step and the block's first
    # step reads the carried state: no shifted state (and no second exp) is needed.
    lines = [] if sig.query_static else [_q_rows("(r_t + 1)", "m_t1", "b_q1")]
    lines += [
        f"b_o = {_readout(sig, 'b_q1')}  # [BT, BV], o_(t+1) = S_t q_(t+1)",
        store.format(p=_rows("V", "o_v", "(r_t + 1)"), m="m_t1"),
    ]
    q0 = "b_qS" if sig.query_static else "b_q0[:, None]"
    if not sig.query_static:
        lines.append(_Q0)
    lines.append(f"b_o0 = tl.sum(b_h * {q0}, axis=0)  # [BV], o_t0 = S_(t0-1) q_t0")
    lines.append(
        "tl.store(o_base + ((bos + i_t * BT) * H + i_h) * V + o_v, b_o0.to(o.dtype.element_ty), mask=m_v)"
    )
    return "\n".join(lines)


def bwd_cotangent(sig: CoreSig) -> str:
    """``b_c``: what the read-outs feed into ``dL/dS_t`` at each row."""
    if sig.readout is Readout.AFTER:
        rows, mask, do_name, q_name = "r_t", "m_t", "b_do", "b_q"
    else:  # dL/dS_t gets do_(t+1) q_(t+1)^T; the block's last row gets it through the carry
        rows, mask, do_name, q_name = "(r_t + 1)", "m_t1", "b_do1", "b_q1"
    lines = [f"{do_name} = {_load_rows('do', 'V', 'o_v', rows, mask)}  # [BT, BV]"]
    if sig.query_static:
        lines.append(f"b_c = b_qS[None, :, :] * {do_name}[:, None, :]  # [BT, BK, BV]")
    else:
        lines.append(_q_rows(rows, mask, q_name))
        lines.append(f"b_c = {q_name}[:, :, None] * {do_name}[:, None, :]  # [BT, BK, BV]")
    return "\n".join(lines)


def bwd_dk(sig: CoreSig) -> str:
    """``dk_t[k] = Σ_v dS_t[v, k] v_t[v]`` (a V-block partial), or its sum over time when static."""
    if sig.key_static:
        return "b_dkS += tl.sum(b_dhs * b_v[:, None, :], axis=0)  # [BK, BV]"
    return (
        "b_dk = tl.sum(b_dhs * b_v[:, None, :], axis=2)  # [BT, BK]\n"
        f"tl.store(dk + i_v.to(tl.int64) * R * H * K + {_rows('K', 'o_k')}, b_dk, "
        "mask=m_t[:, None] & m_k[None, :])"
    )


def bwd_dq(sig: CoreSig) -> str:
    """``dq_t[k] = scale Σ_v do_t[v] S_t[v, k]`` (``S_{t-1}`` for BEFORE)."""
    if sig.readout is Readout.AFTER:
        if sig.query_static:
            return "b_dqS += tl.sum(b_hs * b_do[:, None, :], axis=0)  # [BK, BV]"
        return (
            "b_dq = tl.sum(b_hs * b_do[:, None, :], axis=2) * scale  # [BT, BK]\n"
            f"tl.store(dq + i_v.to(tl.int64) * R * H * K + {_rows('K', 'o_k')}, b_dq, "
            "mask=m_t[:, None] & m_k[None, :])"
        )
    # BEFORE: row t serves step t+1 (whose read state is S_t); step t0 reads the entering state
    first = (
        "b_do0 = tl.load(do + ((bos + i_t * BT) * H + i_h) * V + o_v, mask=m_v, other=0.0)"
        ".to(tl.float32)  # [BV], do of the block's first step"
    )
    if sig.query_static:
        return (
            f"{first}\nb_dqS += tl.sum(b_hs * b_do1[:, None, :], axis=0) + b_h * b_do0[None, :]  # [BK, BV]"
        )
    p0 = "dq + i_v.to(tl.int64) * R * H * K + ((bos + i_t * BT) * H + i_h) * K + o_k"
    return (
        f"{first}\n"
        "b_dq = tl.sum(b_hs * b_do1[:, None, :], axis=2) * scale  # [BT, BK], dq_(t+1)\n"
        f"tl.store(dq + i_v.to(tl.int64) * R * H * K + {_rows('K', 'o_k', '(r_t + 1)')}, b_dq, "
        "mask=m_t1[:, None] & m_k[None, :])\n"
        f"tl.store({p0}, tl.sum(b_h * b_do0[None, :], axis=1) * scale, mask=m_k)  # dq_t0"
    )


def bwd_carry_extra(sig: CoreSig) -> str:
    """BEFORE: step t0's read-out of the entering state joins the carried gradient."""
    if sig.readout is Readout.AFTER:
        return "pass  # AFTER never reads the entering state"
    if sig.query_static:
        return "b_dh += b_qS * b_do0[None, :]  # o_t0 = S_(t0-1) q_t0"
    return f"{_Q0}\nb_dh += b_q0[:, None] * b_do0[None, :]  # o_t0 = S_(t0-1) q_t0"


def bwd_decay_grad(sig: CoreSig) -> str:
    """Reduce ``b_dl = dL/d log Λ_t`` onto the decay's own axes and store / accumulate it."""
    d = sig.decay
    if d is Decay.NONE:
        return "pass  # no decay"
    p_v = f"dgv + i_k.to(tl.int64) * R * H * V + {_rows('V', 'o_v')}"
    p_k = f"dgk + i_v.to(tl.int64) * R * H * K + {_rows('K', 'o_k')}"
    m_tv, m_tk = "m_t[:, None] & m_v[None, :]", "m_t[:, None] & m_k[None, :]"
    if d is Decay.SCALAR:
        return (
            "b_dg = tl.sum(tl.sum(b_dl, axis=2), axis=1)  # [BT]\n"
            "tl.store(dg + (i_v * NK + i_k).to(tl.int64) * R * H + r_t * H + i_h, b_dg, mask=m_t)"
        )
    lines = []
    if d in (Decay.KEY, Decay.OUTER):
        lines.append(f"tl.store({p_k}, tl.sum(b_dl, axis=2), mask={m_tk})  # [BT, BK]")
    if d in (Decay.VALUE, Decay.OUTER):
        lines.append(f"tl.store({p_v}, tl.sum(b_dl, axis=1), mask={m_tv})  # [BT, BV]")
    if d is Decay.CHANNEL and sig.decay_static:
        lines.append("b_dlS += tl.sum(b_dl, axis=0)  # [BK, BV], dL/d log Λ summed over time")
    elif d is Decay.CHANNEL:  # log Λ[v, k] = gv_t[v] A[v, k]
        lines.append(f"tl.store({p_v}, tl.sum(b_dl * b_A[None, :, :], axis=1), mask={m_tv})  # [BT, BV]")
        lines.append("b_dA += tl.sum(b_dl * b_gv[:, None, :], axis=0)  # [BK, BV]")
    return "\n".join(lines)


def bwd_static_init(sig: CoreSig) -> str:
    """fp32 accumulators, over the program's whole sequence, for time-invariant operands."""
    names = []
    if sig.key_static:
        names.append("b_dkS")
    if sig.query_static:
        names.append("b_dqS")
    if sig.decay is Decay.CHANNEL:
        names.append("b_dlS" if sig.decay_static else "b_dA")
    return "\n".join(f"{n} = tl.zeros([BK, BV], dtype=tl.float32)" for n in names) or "pass"


def bwd_static_store(sig: CoreSig) -> str:
    """Per-sequence partials ``[N, H, V, K]`` (``[NK, N, H, V]`` for a static ``gv``), summed by the host."""
    p = "i_n.to(tl.int64) * H * V * K + p_hkv"
    lines = []
    if sig.key_static:
        lines.append(f"tl.store(dk + {p}, b_dkS, mask=m_s)")
    if sig.query_static:
        lines.append(f"tl.store(dq + {p}, b_dqS * scale, mask=m_s)")
    if sig.decay is Decay.CHANNEL and sig.decay_static:
        lines.append(f"tl.store(dA + {p}, b_dlS * b_gvS[None, :], mask=m_s)")
        lines.append(
            "tl.store(dgv + ((i_k * N + i_n).to(tl.int64) * H + i_h) * V + o_v, "
            "tl.sum(b_dlS * b_A, axis=0), mask=m_v)"
        )
    elif sig.decay is Decay.CHANNEL:
        lines.append(f"tl.store(dA + {p}, b_dA, mask=m_s)")
    return "\n".join(lines) or "pass"
