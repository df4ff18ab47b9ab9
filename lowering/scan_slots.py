"""The named slots of the scan kernels: the lines a core signature changes.

Tiles are ``[BT, BK, BV]`` (time, key, value; value fastest, so Triton's default layout puts
lanes on V and keeps most of K inside a thread: the read-out's sum over K needs few shuffles,
and the time axis, inside each thread, scans without any).

Per-block operands are declared as :class:`RowLoad` s; the templates issue each block's loads
one block ahead (``n_<name>``, kept in the storage dtype) and hand them to the slots as fp32
``b_<name>``. The other slots return source text (unindented) using these names:

- ``b_a``: the step factors ``Λ_t`` of the block's rows (1 on padded rows);
  ``b_a1``: ``Λ_{t+1}`` for the backward's adjoint scan;
- ``b_u``: the step inputs ``U_t`` (0 on padded rows);
- ``b_hs``: the states ``S_t`` of the block's rows, ``b_h``: the state entering the block ``[BK, BV]``;
- ``b_dhs``: ``dL/dS_t``; ``b_dl``: ``dL/d log Λ_t`` (elementwise);
- ``b_D``: with a skip term (``CoreInputs.D``), its ``[BV]`` parameter, zero outside K-block 0.

Row masks: ``m_t`` (step exists), ``m_t1`` (step ``t+1`` exists and lies in this block).
"""

from __future__ import annotations

from dataclasses import dataclass

from scandsl._core import CoreSig, Decay, Readout

__all__ = [
    "RowLoad",
    "late_kq",
    "gate_name",
    "shares_gate",
    "row_loads",
    "static_loads",
    "decay",
    "step_input",
    "bwd_dv",
    "fwd_readout",
    "bwd_cotangent",
    "bwd_dk",
    "bwd_dq",
    "bwd_carry_extra",
    "bwd_decay_grad",
    "bwd_static_init",
    "bwd_static_store",
    "chunk_totals_init",
    "chunk_log_decay",
    "chunk_totals_store",
    "chunk_carry",
]

_FULL = "(BT, BK, BV)"
_LOG2E = "1.4426950408889634"


@dataclass(frozen=True, slots=True)
class RowLoad:
    """One per-block operand: ``ptr`` is ``[B*T, H, width]`` (``[B*T, H]`` when width is None).

    ``rows``: ``"t"`` (the block's steps, ``[BT, lanes]``), ``"t+1"`` (shifted by one step,
    inside the block) or ``"t0"`` (the block's first step only, ``[lanes]``).
    """

    name: str
    ptr: str
    width: str | None
    rows: str = "t"
    scaled: bool = False
    late: bool = False

    def emit(self, rows: str, mask: str, mask1: str, first: str, block: str) -> str:
        """``n_<name> = tl.load(...)`` for the block whose rows/masks are named by the arguments."""
        lane = {"K": "o_k", "V": "o_v", None: None}[self.width]
        m_lane = {"K": "m_k", "V": "m_v", None: None}[self.width]
        if self.rows == "t0":
            off = f"({first} * H + i_h) * {self.width} + {lane}"
            ok = f"block_exists({lane}, {block}, T_n, BT)"
            return f"n_{self.name} = tl.load({self.ptr} + {off}, mask={m_lane} & {ok}, other=0.0)"
        r, m = (rows, mask) if self.rows == "t" else (f"({rows} + 1)", mask1)
        if lane is None:
            return f"n_{self.name} = tl.load({self.ptr} + {r} * H + i_h, mask={m}, other=0.0)"
        off = f"({r}[:, None] * H + i_h) * {self.width} + {lane}[None, :]"
        return (
            f"n_{self.name} = tl.load({self.ptr} + {off}, mask={m}[:, None] & {m_lane}[None, :], other=0.0)"
        )

    def take(self) -> str:
        """``b_<name>`` in fp32, or, ``late``, still in the storage dtype (the slot converts it)."""
        if self.late:
            return f"b_{self.name} = n_{self.name}  # [BT, B{self.width}], storage dtype: converted after its broadcast"
        scale = " * scale" if self.scaled else ""
        shape = {"t": "[BT, B{w}]", "t+1": "[BT, B{w}], step t+1", "t0": "[B{w}], step t0"}[self.rows]
        shape = shape.format(w=self.width or "")
        if self.width is None:
            shape = shape.replace("[BT, B]", "[BT]")
        return f"b_{self.name} = n_{self.name}.to(tl.float32){scale}  # {shape}"


def _gate_loads(sig: CoreSig, suffix: str, rows: str) -> list[RowLoad]:
    if sig.decay_static:
        return []
    d, out = sig.decay, []
    if d is Decay.SCALAR:
        out.append(RowLoad("g" + suffix, "g", None, rows))
    if d in (Decay.KEY, Decay.OUTER):
        out.append(RowLoad("gk" + suffix, "gk", "K", rows))
    if d in (Decay.VALUE, Decay.OUTER, Decay.CHANNEL):
        out.append(RowLoad("gv" + suffix, "gv", "V", rows))
    return out


def late_kq(sig: CoreSig) -> bool:
    """Whether the forward converts per-step k and q (AFTER read-out) to fp32 after broadcasting
    them over the state tile instead of before.

    The per-channel tiles (lanes 8 V x 4 K, time and 4 K in each thread) hand each thread 4 k and
    4 q values a step that the load layout spread over other lanes: the move between layouts goes
    through shared memory, in fp32 when converted first. Moving them in bf16 halves those bytes
    (sm_90 build: 32 instead of 64 LDS.128 a 32-step block, no spill) for 4x the conversions; on
    the H100 the scan kernel ran 0.319 vs 0.327 ms at the Mamba-1 shape
    (``bench/results/gpu_ab_scan_run1.json``). Other decays keep their measured form.
    """
    return sig.decay is Decay.CHANNEL and not sig.decay_static


def gate_name(shared_gate: bool) -> str:
    """The value gate's fp32 rows in the kernels: ``b_vg``, or with ``shared_gate`` the decay's
    per-step gate ``b_gv``, the same tensor (Mamba's ``dt`` scales the input and the decay's
    exponent): read once, which saves a ``[B, T, H, V]`` read in the forward and the backward."""
    return "b_gv" if shared_gate else "b_vg"


def shares_gate(sig: CoreSig) -> bool:
    """Whether the kernels load a per-step ``[B, T, H, V]`` decay gate ``gv`` a value gate can be."""
    return sig.decay in (Decay.VALUE, Decay.OUTER, Decay.CHANNEL) and not sig.decay_static


def row_loads(
    sig: CoreSig, kernel: str, value_gated: bool = False, shared_gate: bool = False
) -> list[RowLoad]:
    """Every per-block operand the ``kernel`` reads: ``"fwd"``, ``"bwd"``, or ``"totals"`` (the
    split forward's pass 1, which reads no query); with ``value_gated`` the value's second
    factor ``vg`` too, unless it is the decay's gate (``shared_gate``)."""
    own = value_gated and not shared_gate
    loads = [RowLoad("v", "v", "V")] + ([RowLoad("vg", "vg", "V")] if own else [])
    late = kernel != "bwd" and late_kq(sig)
    if not sig.key_static:
        loads.append(RowLoad("k", "k", "K", late=late))
    loads += _gate_loads(sig, "", "t")
    after = sig.readout is Readout.AFTER
    if kernel == "bwd":
        loads += _gate_loads(sig, "1", "t+1")
        loads += (
            [RowLoad("do", "do", "V")]
            if after
            else [RowLoad("do1", "do", "V", "t+1"), RowLoad("do0", "do", "V", "t0")]
        )
    if not sig.query_static and kernel != "totals":
        # the forward scales its outputs ([BT, BV]) instead of its queries ([BT, BK], each
        # thread holding most of K): fewer multiplies a block
        scaled = kernel == "bwd"
        if after:
            loads.append(RowLoad("q", "q", "K", "t", scaled=scaled, late=late))
        else:
            loads += [
                RowLoad("q1", "q", "K", "t+1", scaled=scaled),
                RowLoad("q0", "q", "K", "t0", scaled=scaled),
            ]
    return loads


def bwd_dv(value_gated: bool, skip: bool = False, shared_gate: bool = False) -> str:
    """Store ``dv`` (and ``dvg``) from ``b_dv = Σ_k dS_t[v, k] k_t[k]``, the value's gradient.

    With ``skip`` the read-out's ``D ⊙ v_t`` adds ``D ⊙ do_t`` to ``dv`` (not to ``dvg``: the
    term reads the first factor alone) and the block's ``Σ_t do_t ⊙ v_t`` to ``b_dD``."""
    rows = "(r_t[:, None] * H + i_h) * V + o_v[None, :]"
    mask = "m_t[:, None] & m_v[None, :]"
    part = "i_k.to(tl.int64) * R * H * V"  # this K-block's partial (NK > 1)
    dv = "b_dv" if not value_gated else f"b_dv * {gate_name(shared_gate)}"
    lines = ["# the value was v ⊙ vg: each factor's gradient is the other times b_dv"] if value_gated else []
    if skip:
        lines.append("# o_t's skip term D ⊙ v_t adds D ⊙ do_t to dv (b_D is 0 outside K-block 0)")
        dv += " + b_D[None, :] * b_do"
    lines.append(f"tl.store(dv + {part} + {rows}, {dv}, mask={mask})")
    if value_gated and shared_gate:
        lines.append(
            "b_dvg = b_dv * b_v  # [BT, BV], the gate's gradient as the value's factor: joins dgv below"
        )
    elif value_gated:
        lines.append(f"tl.store(dvg + {part} + {rows}, b_dv * b_v, mask={mask})")
    if skip:
        lines.append("b_dD += tl.sum(b_do * b_v, axis=0)  # [BV], dD = Σ_t do_t ⊙ v_t (padded rows load 0)")
    return "\n".join(lines)


def static_loads(sig: CoreSig, readout: bool = True, skip: bool = False) -> str:
    """Time-invariant operands, loaded once per program (``[BK, BV]`` tiles of ``[H, V, K]``);
    without ``readout`` (the split forward's pass 1), not the query (nor the skip term's D)."""
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
    if sig.query_static and readout:
        lines.append("b_qS = tl.load(q + p_hkv, mask=m_s, other=0.0).to(tl.float32) * scale  # [BK, BV]")
    if skip and readout:
        # with several K-blocks the host sums their partial outputs: the term joins one of them
        lines.append(
            "b_D = tl.load(D + i_h * V + o_v, mask=m_v, other=0.0).to(tl.float32) * (i_k == 0)"
            "  # [BV], the skip term's D"
        )
    return "\n".join(lines) or "pass  # no time-invariant operands"


def decay(sig: CoreSig, suffix: str, mask: str) -> str:
    """``b_a{suffix} = Λ`` as a ``[BT, BK, BV]`` tile from the loaded log-gates (log 0 on masked rows)."""
    out, s, d = f"b_a{suffix}", suffix, sig.decay
    if d is Decay.NONE:
        return f"{out} = tl.full({_FULL}, 1.0, tl.float32)"
    if d is Decay.CHANNEL and sig.decay_static:
        return f"{out} = tl.broadcast_to(tl.where({mask}[:, None, None], b_aS[None, :, :], 1.0), {_FULL})"
    expr = {
        Decay.SCALAR: f"tl.broadcast_to(tl.exp(b_g{s})[:, None, None], {_FULL})",
        Decay.KEY: f"tl.broadcast_to(tl.exp(b_gk{s})[:, :, None], {_FULL})",
        Decay.VALUE: f"tl.broadcast_to(tl.exp(b_gv{s})[:, None, :], {_FULL})",
        Decay.OUTER: f"tl.exp(b_gk{s})[:, :, None] * tl.exp(b_gv{s})[:, None, :]",
        # the fused gate: one exp per (step, state, channel), Mamba's exp(dt ⊗ A)
        Decay.CHANNEL: f"tl.exp2(b_gv{s}[:, None, :] * b_A2[None, :, :])",
    }[d]
    return f"{out} = {expr}  # [BT, BK, BV]"


def step_input(sig: CoreSig, value_gated: bool = False, late: bool = False, shared_gate: bool = False) -> str:
    """``b_u = U_t`` on the block's rows (padded rows load 0); ``b_w`` is the value, ``v ⊙ vg``
    when ``value_gated`` (the backward keeps both factors for their gradients; with
    ``shared_gate`` the factor is the decay's gate ``b_gv``, :func:`gate_name`); ``late``: ``b_k``
    arrives in its storage dtype (:func:`late_kq`)."""
    vg = gate_name(shared_gate)
    w = f"b_w = b_v * {vg}  # [BT, BV], the value v_t ⊙ vg_t\n" if value_gated else "b_w = b_v\n"
    if sig.key_static:
        return w + "b_u = b_kS[None, :, :] * b_w[:, None, :]  # [BT, BK, BV], U_t[v, k] = w_t[v] B[v, k]"
    k = "b_k[:, :, None].to(tl.float32)" if late else "b_k[:, :, None]"
    return w + f"b_u = {k} * b_w[:, None, :]  # [BT, BK, BV], U_t = w_t k_t^T"


def _readout(sig: CoreSig, q: str) -> str:
    """``o[v] = Σ_k S_t[v, k] q[k]`` over the ``[BT, BK, BV]`` state tile (a per-step query comes
    unscaled into the forward: the sum takes the scale, :func:`_scaled`)."""
    if sig.query_static:
        return "tl.sum(b_hs * b_qS[None, :, :], axis=1)"
    if q == "b_q" and late_kq(sig):  # the AFTER query, in its storage dtype (late_kq)
        return "tl.sum(b_hs * b_q[:, :, None].to(tl.float32), axis=1)"
    return f"tl.sum(b_hs * {q}[:, :, None], axis=1)"


def _scaled(sig: CoreSig, out: str) -> list[str]:
    """Multiply a per-step query's read-out ``out`` by the scale, unless the launch says it is 1
    (``SCALED``, a constexpr: mamba's; dropping the multiply took the Mamba-1 scan kernel from
    0.304 to 0.296 ms, ``bench/results/gpu_ab_scan_layout_run3.json``)."""
    if sig.query_static:
        return []
    return ["if SCALED:  # a scale of 1 multiplies nothing", f"    {out} = {out} * scale"]


def _rows(width: str, lane: str, rows: str = "r_t") -> str:
    """Offsets of a ``[BT, B*]`` tile of a ``[B*T, H, D]`` tensor."""
    return f"({rows}[:, None] * H + i_h) * {width} + {lane}[None, :]"


def fwd_readout(sig: CoreSig, skip: bool = False) -> str:
    """Store the block's outputs into ``o_base`` (this K-block's partial when NK > 1); with
    ``skip`` (AFTER only, :func:`scandsl.lowering.scan.takes_skip`) the read-out adds
    ``D ⊙ v_t``, from the value the block loaded anyway."""
    store = "tl.store(o_base + {p}, b_o.to(o.dtype.element_ty), mask={m}[:, None] & m_v[None, :])"
    if sig.readout is Readout.AFTER:
        read = [f"b_o = {_readout(sig, 'b_q')}  # [BT, BV], o_t = S_t q_t", *_scaled(sig, "b_o")]
        if skip:
            read.append("b_o += b_D[None, :] * b_v  # o_t = S_t q_t + D ⊙ v_t")
        return "\n".join([*read, store.format(p=_rows("V", "o_v"), m="m_t")])
    assert not skip, "a skip term needs the AFTER read-out (o_t and v_t on the same row)"
    # BEFORE: o_(t+1) = S_t q_(t+1), so each row serves the next step and the block's first
    # step reads the carried state: no shifted state (and no second exp) is needed.
    o0 = "tl.sum(b_h * b_qS, axis=0)" if sig.query_static else "tl.sum(b_h * b_q0[:, None], axis=0)"
    return "\n".join(
        [
            f"b_o = {_readout(sig, 'b_q1')}  # [BT, BV], o_(t+1) = S_t q_(t+1)",
            *_scaled(sig, "b_o"),
            store.format(p=_rows("V", "o_v", "(r_t + 1)"), m="m_t1"),
            f"b_o0 = {o0}  # [BV], o_t0 = S_(t0-1) q_t0",
            *_scaled(sig, "b_o0"),
            "tl.store(o_base + ((bos + i_t * BT) * H + i_h) * V + o_v, b_o0.to(o.dtype.element_ty), mask=m_v)",
        ]
    )


def bwd_cotangent(sig: CoreSig) -> str:
    """``b_c``: what the read-outs feed into ``dL/dS_t`` at each row."""
    # BEFORE: dL/dS_t gets do_(t+1) q_(t+1)^T; the block's last row gets it through the carry
    do, q = ("b_do", "b_q") if sig.readout is Readout.AFTER else ("b_do1", "b_q1")
    q_tile = "b_qS[None, :, :]" if sig.query_static else f"{q}[:, :, None]"
    return f"b_c = {q_tile} * {do}[:, None, :]  # [BT, BK, BV]"


def bwd_dk(sig: CoreSig) -> str:
    """``dk_t[k] = Σ_v dS_t[v, k] v_t[v]`` (a V-block partial), or its sum over time when static."""
    if sig.key_static:
        return "b_dkS += tl.sum(b_dhs * b_w[:, None, :], axis=0)  # [BK, BV]"
    return (
        "b_dk = tl.sum(b_dhs * b_w[:, None, :], axis=2)  # [BT, BK]\n"
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
    if sig.query_static:
        return "b_dqS += tl.sum(b_hs * b_do1[:, None, :], axis=0) + b_h * b_do0[None, :]  # [BK, BV]"
    p0 = "dq + i_v.to(tl.int64) * R * H * K + ((bos + i_t * BT) * H + i_h) * K + o_k"
    return (
        "b_dq = tl.sum(b_hs * b_do1[:, None, :], axis=2) * scale  # [BT, BK], dq_(t+1)\n"
        f"tl.store(dq + i_v.to(tl.int64) * R * H * K + {_rows('K', 'o_k', '(r_t + 1)')}, b_dq, "
        "mask=m_t1[:, None] & m_k[None, :])\n"
        f"tl.store({p0}, tl.sum(b_h * b_do0[None, :], axis=1) * scale, mask=m_k)  # dq_t0"
    )


def bwd_carry_extra(sig: CoreSig) -> str:
    """BEFORE: step t0's read-out of the entering state joins the carried gradient."""
    if sig.readout is Readout.AFTER:
        return "pass  # AFTER never reads the entering state"
    q0 = "b_qS" if sig.query_static else "b_q0[:, None]"
    return f"b_dh += {q0} * b_do0[None, :]  # o_t0 = S_(t0-1) q_t0"


def bwd_decay_grad(sig: CoreSig, shared_gate: bool = False) -> str:
    """Reduce ``b_dl = dL/d log Λ_t`` onto the decay's own axes and store / accumulate it; with
    ``shared_gate`` the per-step ``gv`` rows also take the gradient of its role as the value's
    factor (``b_dvg``, :func:`bwd_dv`): one ``[B, T, H, V]`` store for the one tensor."""
    d = sig.decay
    also = " + b_dvg" if shared_gate else ""
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
        lines.append(f"tl.store({p_v}, tl.sum(b_dl, axis=1){also}, mask={m_tv})  # [BT, BV]")
    if d is Decay.CHANNEL and sig.decay_static:
        lines.append("b_dlS += tl.sum(b_dl, axis=0)  # [BK, BV], dL/d log Λ summed over time")
    elif d is Decay.CHANNEL:  # log Λ[v, k] = gv_t[v] A[v, k]
        lines.append(
            f"tl.store({p_v}, tl.sum(b_dl * b_A[None, :, :], axis=1){also}, mask={m_tv})  # [BT, BV]"
        )
        lines.append("b_dA += tl.sum(b_dl * b_gv[:, None, :], axis=0)  # [BK, BV]")
    return "\n".join(lines)


def bwd_static_init(sig: CoreSig, skip: bool = False) -> str:
    """fp32 accumulators, over the program's whole sequence, for time-invariant operands (and
    the skip term's ``[BV]`` ``b_dD``)."""
    names = []
    if sig.key_static:
        names.append("b_dkS")
    if sig.query_static:
        names.append("b_dqS")
    if sig.decay is Decay.CHANNEL:
        names.append("b_dlS" if sig.decay_static else "b_dA")
    lines = [f"{n} = tl.zeros([BK, BV], dtype=tl.float32)" for n in names]
    if skip:
        lines.append("b_dD = tl.zeros([BV], dtype=tl.float32)")
    return "\n".join(lines) or "pass"


def bwd_static_store(sig: CoreSig, skip: bool = False) -> str:
    """Per-sequence partials ``[N, H, V, K]`` (``[NK, N, H, V]`` for a static ``gv``, ``[N, H, V]``
    for the skip term's ``dD``), summed by the host."""
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
    if skip:  # every K-block summed the same do ⊙ v: K-block 0 stores it (its partial has the term)
        lines.append("if i_k == 0:\n    tl.store(dD + i_nh.to(tl.int64) * V + o_v, b_dD, mask=m_v)")
    return "\n".join(lines) or "pass"


# ---------------------------------------------------------------- split forward (fwd_mode="split")
def chunk_totals_init(sig: CoreSig) -> str:
    """Pass 1 starts its chunk from a zero state, with a zero log-decay sum ``b_la``."""
    lines = ["b_h = tl.zeros([BK, BV], dtype=tl.float32)  # the chunk's state from a zero start"]
    if sig.decay is not Decay.NONE:
        lines.append("b_la = tl.zeros([BK, BV], dtype=tl.float32)  # Σ log Λ_t over the chunk so far")
    return "\n".join(lines)


def chunk_log_decay(sig: CoreSig) -> str:
    """Add the block's ``Σ_t log Λ_t`` to ``b_la``, from the loaded log-gates (0 on padded rows).

    In log space the chunk's decay is a sum of the gates, reduced over time on their own axes
    (one ``[BK, BV]`` add a block), where the product of the ``Λ_t`` would cost a multiply a step
    and a scan that keeps the ``Λ`` prefixes.
    """
    d, head = sig.decay, "# -- slot: chunk decay, Σ log Λ_t --\n"
    if d is Decay.NONE:
        return head + "pass  # no decay: the chunk's A_c is 1"
    if d is Decay.CHANNEL and sig.decay_static:
        return head + "b_la += tl.sum(m_t.to(tl.float32), axis=0) * b_gvS[None, :] * b_A  # steps x log Λ"
    term = {
        Decay.SCALAR: "tl.sum(b_g, axis=0)",
        Decay.KEY: "tl.sum(b_gk, axis=0)[:, None]",
        Decay.VALUE: "tl.sum(b_gv, axis=0)[None, :]",
        Decay.OUTER: "tl.sum(b_gk, axis=0)[:, None] + tl.sum(b_gv, axis=0)[None, :]",
        Decay.CHANNEL: "tl.sum(b_gv, axis=0)[None, :] * b_A  # log Λ_t[v, k] = gv_t[v] A[v, k]",
    }[d]
    return head + f"b_la += {term}"


def chunk_totals_store(sig: CoreSig) -> str:
    """Pass 1's result: ``B_c`` into ``hb``, ``log A_c`` into ``la`` (no ``la`` without decay)."""
    lines = ["tl.store(hb + p_c + p_s, b_h, mask=m_s)  # B_c"]
    if sig.decay is not Decay.NONE:
        lines.append("tl.store(la + p_c + p_s, b_la, mask=m_s)  # log A_c")
    return "\n".join(lines)


def chunk_carry(sig: CoreSig) -> str:
    """Pass 2: apply chunk ``c`` to the entering state, ``S_in[c + 1] = A_c ⊙ S_in[c] + B_c``."""
    if sig.decay is Decay.NONE:
        return "b_h += b_b  # no decay: A_c = 1"
    return "b_h = tl.exp(tl.load(la + p_c + p_s, mask=m_s, other=0.0)) * b_h + b_b"
