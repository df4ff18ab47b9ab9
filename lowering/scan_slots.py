"""The named slots of the scan kernels: the lines a core signature changes.

Each function returns Triton source text (unindented; the templates in
:mod:`scandsl.lowering.scan_source` indent it) for one slot. Names the slots agree on:

- ``b_a``: the step factors ``Λ_t`` of the block's rows ``[BT, BV, BK]`` (1 on padded rows);
  ``b_a1``: ``Λ_{t+1}`` for the backward's adjoint scan;
- ``b_u``: the step inputs ``U_t`` ``[BT, BV, BK]`` (0 on padded rows);
- ``b_hs``: the states ``S_t`` of the block's rows, ``b_h``: the state entering the block;
- ``b_dhs``: ``dL/dS_t``; ``b_dl``: ``dL/d log Λ_t`` (elementwise ``[BT, BV, BK]``).

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
    "bwd_decay_grad",
    "bwd_static_init",
    "bwd_static_store",
]

_FULL = "(BT, BV, BK)"


def _row_ptr(width: str, lane: str, rows: str = "r_t") -> str:
    """Offsets of a ``[BT, B*]`` tile of a ``[B*T, H, D]`` tensor."""
    return f"({rows}[:, None] * H + i_h) * {width} + {lane}[None, :]"


def static_loads(sig: CoreSig) -> str:
    """Time-invariant operands, loaded once per program (``[BV, BK]`` tiles of ``[H, V, K]``)."""
    lines = []
    if sig.decay is Decay.CHANNEL:
        lines.append("b_A = tl.load(A + p_hvk, mask=m_s, other=0.0).to(tl.float32)  # [BV, BK]")
    if sig.decay_static:
        lines.append("b_gvS = tl.load(gv + i_h * V + o_v, mask=m_v, other=0.0).to(tl.float32)  # [BV]")
        lines.append("# a static decay costs one exp per program, not one per step")
        lines.append("b_aS = tl.exp(b_gvS[:, None] * b_A)  # [BV, BK]")
    if sig.key_static:
        lines.append("b_kS = tl.load(k + p_hvk, mask=m_s, other=0.0).to(tl.float32)  # [BV, BK]")
    if sig.query_static:
        lines.append("b_qS = tl.load(q + p_hvk, mask=m_s, other=0.0).to(tl.float32) * scale  # [BV, BK]")
    return "\n".join(lines) or "pass  # no time-invariant operands"


def decay(sig: CoreSig, out: str, rows: str, mask: str) -> str:
    """``{out} = Λ`` for rows ``rows`` (``[BT, BV, BK]``); masked rows load log 0, so Λ = 1 there.

    Also leaves the loaded log-gates in ``b_g{suffix}`` / ``b_gk{suffix}`` / ``b_gv{suffix}``.
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
        lines.append(
            f"b_gk{s} = tl.load(gk + {_row_ptr('K', 'o_k', rows)}, "
            f"mask={mask}[:, None] & m_k[None, :], other=0.0).to(tl.float32)  # [BT, BK]"
        )
    if d in (Decay.VALUE, Decay.OUTER, Decay.CHANNEL):
        lines.append(
            f"b_gv{s} = tl.load(gv + {_row_ptr('V', 'o_v', rows)}, "
            f"mask={mask}[:, None] & m_v[None, :], other=0.0).to(tl.float32)  # [BT, BV]"
        )
    expr = {
        Decay.SCALAR: f"tl.broadcast_to(tl.exp(b_g{s})[:, None, None], {_FULL})",
        Decay.KEY: f"tl.broadcast_to(tl.exp(b_gk{s})[:, None, :], {_FULL})",
        Decay.VALUE: f"tl.broadcast_to(tl.exp(b_gv{s})[:, :, None], {_FULL})",
        Decay.OUTER: f"tl.exp(b_gv{s})[:, :, None] * tl.exp(b_gk{s})[:, None, :]",
        # the fused gate: one exp per (step, channel, state), Mamba's exp(dt ⊗ A)
        Decay.CHANNEL: f"tl.exp(b_gv{s}[:, :, None] * b_A[None, :, :])",
    }[d]
    lines.append(f"{out} = {expr}  # [BT, BV, BK]")
    return "\n".join(lines)


def step_input(sig: CoreSig) -> str:
    """``b_u = U_t`` on the block's rows (``b_v`` is loaded; padded rows give 0)."""
    if sig.key_static:
        return "b_u = b_v[:, :, None] * b_kS[None, :, :]  # [BT, BV, BK], U_t[v, k] = v_t[v] B[v, k]"
    return (
        f"b_k = tl.load(k + {_row_ptr('K', 'o_k')}, mask=m_t[:, None] & m_k[None, :], other=0.0)"
        ".to(tl.float32)  # [BT, BK]\n"
        "b_u = b_v[:, :, None] * b_k[:, None, :]  # [BT, BV, BK], U_t = v_t k_t^T"
    )


def _q_rows(rows: str, mask: str, out: str) -> str:
    return (
        f"{out} = tl.load(q + {_row_ptr('K', 'o_k', rows)}, mask={mask}[:, None] & m_k[None, :], "
        "other=0.0).to(tl.float32) * scale  # [BT, BK]"
    )


def _q_first(out: str) -> str:
    """``q`` of the block's first step ``[BK]`` (BEFORE reads the carried state with it)."""
    if out == "b_q0":
        return (
            "b_q0 = tl.load(q + ((bos + i_t * BT) * H + i_h) * K + o_k, mask=m_k, other=0.0)"
            ".to(tl.float32) * scale  # [BK]"
        )
    raise ValueError(out)


def _readout(sig: CoreSig, state: str, q: str) -> str:
    """``o[v] = Σ_k S[v, k] q[k]`` for a ``[BT, BV, BK]`` state tile."""
    if sig.query_static:
        return f"tl.sum({state} * b_qS[None, :, :], axis=2)"
    return f"tl.sum({state} * {q}[:, None, :], axis=2)"


def fwd_readout(sig: CoreSig) -> str:
    """Store the block's outputs into ``o_base`` (this K-block's partial when NK > 1)."""
    p_o = f"o_base + {_row_ptr('V', 'o_v')}"
    if sig.readout is Readout.AFTER:
        lines = [] if sig.query_static else [_q_rows("r_t", "m_t", "b_q")]
        lines += [
            f"b_o = {_readout(sig, 'b_hs', 'b_q')}  # [BT, BV], o_t = S_t q_t",
            f"tl.store({p_o}, b_o.to(o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])",
        ]
        return "\n".join(lines)
    # BEFORE: o_{t+1} = S_t q_{t+1}, so each row serves the next step; the block's first step
    # reads the carried state. No shifted state (and no second exp) is ever needed.
    p_o1 = f"o_base + {_row_ptr('V', 'o_v', '(r_t + 1)')}"
    lines = [] if sig.query_static else [_q_rows("(r_t + 1)", "m_t1", "b_q1")]
    lines += [
        f"b_o = {_readout(sig, 'b_hs', 'b_q1')}  # [BT, BV], o_(t+1) = S_t q_(t+1)",
        f"tl.store({p_o1}, b_o.to(o.dtype.element_ty), mask=m_t1[:, None] & m_v[None, :])",
    ]
    if not sig.query_static:
        lines.append(_q_first("b_q0"))
        lines.append("b_o0 = tl.sum(b_h * b_q0[None, :], axis=1)  # [BV], o_t0 = S_(t0-1) q_t0")
    else:
        lines.append("b_o0 = tl.sum(b_h * b_qS, axis=1)  # [BV], o_t0 = S_(t0-1) q_t0")
    lines.append(
        "tl.store(o_base + ((bos + i_t * BT) * H + i_h) * V + o_v, b_o0.to(o.dtype.element_ty), mask=m_v)"
    )
    return "\n".join(lines)


def bwd_cotangent(sig: CoreSig) -> str:
    """``b_c``: what the read-outs feed into ``dL/dS_t`` at each row (``[BT, BV, BK]``)."""
    if sig.readout is Readout.AFTER:
        rows, mask, do_name, q_name = "r_t", "m_t", "b_do", "b_q"
    else:  # dL/dS_t gets do_(t+1) q_(t+1)^T; the block's last row gets it through the carry
        rows, mask, do_name, q_name = "(r_t + 1)", "m_t1", "b_do1", "b_q1"
    lines = [
        f"{do_name} = tl.load(do + {_row_ptr('V', 'o_v', rows)}, mask={mask}[:, None] & m_v[None, :], "
        "other=0.0).to(tl.float32)  # [BT, BV]"
    ]
    if sig.query_static:
        lines.append(f"b_c = {do_name}[:, :, None] * b_qS[None, :, :]  # [BT, BV, BK]")
    else:
        lines.append(_q_rows(rows, mask, q_name))
        lines.append(f"b_c = {do_name}[:, :, None] * {q_name}[:, None, :]  # [BT, BV, BK]")
    return "\n".join(lines)


def bwd_dk(sig: CoreSig) -> str:
    """``dk_t[k] = Σ_v dS_t[v, k] v_t[v]`` (a V-block partial), or its sum over time when static."""
    if sig.key_static:
        return "b_dkS += tl.sum(b_dhs * b_v[:, :, None], axis=0)  # [BV, BK]"
    return (
        "b_dk = tl.sum(b_dhs * b_v[:, :, None], axis=1)  # [BT, BK]\n"
        f"tl.store(dk + i_v.to(tl.int64) * R * H * K + {_row_ptr('K', 'o_k')}, b_dk, "
        "mask=m_t[:, None] & m_k[None, :])"
    )


def bwd_dq(sig: CoreSig) -> str:
    """``dq_t[k] = scale Σ_v do_t[v] S_t[v, k]`` (``S_{t-1}`` for BEFORE)."""
    if sig.readout is Readout.AFTER:
        if sig.query_static:
            return "b_dqS += tl.sum(b_do[:, :, None] * b_hs, axis=0)  # [BV, BK]"
        return (
            "b_dq = tl.sum(b_do[:, :, None] * b_hs, axis=1) * scale  # [BT, BK]\n"
            f"tl.store(dq + i_v.to(tl.int64) * R * H * K + {_row_ptr('K', 'o_k')}, b_dq, "
            "mask=m_t[:, None] & m_k[None, :])"
        )
    # BEFORE: row t serves step t+1 (its state is S_t); step t0 reads the carried state
    first = (
        "b_do0 = tl.load(do + ((bos + i_t * BT) * H + i_h) * V + o_v, mask=m_v, other=0.0)"
        ".to(tl.float32)  # [BV]"
    )
    if sig.query_static:
        return (
            f"{first}\nb_dqS += tl.sum(b_do1[:, :, None] * b_hs, axis=0) + b_do0[:, None] * b_h  # [BV, BK]"
        )
    p0 = "dq + i_v.to(tl.int64) * R * H * K + ((bos + i_t * BT) * H + i_h) * K + o_k"
    return (
        f"{first}\n"
        "b_dq = tl.sum(b_do1[:, :, None] * b_hs, axis=1) * scale  # [BT, BK], dq_(t+1)\n"
        f"tl.store(dq + i_v.to(tl.int64) * R * H * K + {_row_ptr('K', 'o_k', '(r_t + 1)')}, b_dq, "
        "mask=m_t1[:, None] & m_k[None, :])\n"
        f"tl.store({p0}, tl.sum(b_do0[:, None] * b_h, axis=0) * scale, mask=m_k)  # dq_t0"
    )


def bwd_carry_extra(sig: CoreSig) -> str:
    """BEFORE: step t0's read-out of the entering state joins the carried gradient."""
    if sig.readout is Readout.AFTER:
        return "pass  # AFTER reads S_t only, nothing reads the entering state inside the block"
    q0 = "b_qS" if sig.query_static else "b_q0[None, :]"
    pre = "" if sig.query_static else _q_first("b_q0") + "\n"
    return f"{pre}b_dh += b_do0[:, None] * {q0}  # o_t0 = S_(t0-1) q_t0"


def bwd_decay_grad(sig: CoreSig) -> str:
    """Reduce ``b_dl = dL/d log Λ_t`` onto the decay's own axes and store / accumulate it."""
    d = sig.decay
    if d is Decay.NONE:
        return "pass  # no decay"
    p_v = f"dgv + i_k.to(tl.int64) * R * H * V + {_row_ptr('V', 'o_v')}"
    p_k = f"dgk + i_v.to(tl.int64) * R * H * K + {_row_ptr('K', 'o_k')}"
    m_tv, m_tk = "m_t[:, None] & m_v[None, :]", "m_t[:, None] & m_k[None, :]"
    if d is Decay.SCALAR:
        return (
            "b_dg = tl.sum(tl.sum(b_dl, axis=2), axis=1)  # [BT]\n"
            "tl.store(dg + (i_v * NK + i_k).to(tl.int64) * R * H + r_t * H + i_h, b_dg, mask=m_t)"
        )
    lines = []
    if d in (Decay.KEY, Decay.OUTER):
        lines.append(f"tl.store({p_k}, tl.sum(b_dl, axis=1), mask={m_tk})  # [BT, BK]")
    if d in (Decay.VALUE, Decay.OUTER):
        lines.append(f"tl.store({p_v}, tl.sum(b_dl, axis=2), mask={m_tv})  # [BT, BV]")
    if d is Decay.CHANNEL and sig.decay_static:
        lines.append("b_dlS += tl.sum(b_dl, axis=0)  # [BV, BK], dL/d log Λ summed over time")
    elif d is Decay.CHANNEL:  # log Λ[v, k] = gv_t[v] A[v, k]
        lines.append(f"tl.store({p_v}, tl.sum(b_dl * b_A[None, :, :], axis=2), mask={m_tv})  # [BT, BV]")
        lines.append("b_dA += tl.sum(b_dl * b_gv[:, :, None], axis=0)  # [BV, BK]")
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
    return "\n".join(f"{n} = tl.zeros([BV, BK], dtype=tl.float32)" for n in names) or "pass"


def bwd_static_store(sig: CoreSig) -> str:
    """Per-sequence partials ``[N, H, V, K]`` (``[NK, N, H, V]`` for a static ``gv``), summed by the host."""
    p = "i_n.to(tl.int64) * H * V * K + p_hvk"
    lines = []
    if sig.key_static:
        lines.append(f"tl.store(dk + {p}, b_dkS, mask=m_s)")
    if sig.query_static:
        lines.append(f"tl.store(dq + {p}, b_dqS * scale, mask=m_s)")
    if sig.decay is Decay.CHANNEL and sig.decay_static:
        lines.append(f"tl.store(dA + {p}, b_dlS * b_gvS[:, None], mask=m_s)")
        lines.append(
            "tl.store(dgv + ((i_k * N + i_n).to(tl.int64) * H + i_h) * V + o_v, "
            "tl.sum(b_dlS * b_A, axis=1), mask=m_v)"
        )
    elif sig.decay is Decay.CHANNEL:
        lines.append(f"tl.store(dA + {p}, b_dA, mask=m_s)")
    return "\n".join(lines) or "pass"
