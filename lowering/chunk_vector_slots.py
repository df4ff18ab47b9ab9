"""Named code slots of the chunked vector-decay kernels, and ``generate_source``.

A :class:`CoreSig` changes the kernels in three places, each a named slot:

- **readout** (``qshift``): AFTER reads ``S_t`` — the query at row ``i`` sees the cumulative
  log-decay of row ``i`` and keys ``j <= i``; BEFORE (RWKV-6) reads ``S_{t-1}`` — it sees row
  ``i - 1`` and keys ``j < i``. One constant, ``QSHIFT``, carries both facts.
- **decay along K** (``state_decay``, ``key_scores``, ``key_diag``, ``key_scores_t``,
  ``key_diag_t``, ``key_apply``, ``key_carry``, ``key_gate_grad``): with a key decay the scores
  ``a_ij = sum_k q_ik k_jk exp(bkq_ik - bk_jk)`` are rebased per sub-chunk and formed
  elementwise inside it; without one they are plain tensor-core products.
- **decay along V** (``state_decay``, ``value_apply``, ``value_apply_t``, ``value_scores``,
  ``value_diag``, ``value_carry``, ``value_gate_grad``): the mirror image, the decay sitting on
  the value axis of ``a_ij v_j`` (and of ``do_i . v_j`` in the backward).

Log-decay gradients (a reverse cumulative sum inside each chunk):
``d bk_j = q_j dq_j [after] - k_j dk_j (+ sum_v h_end dh_end on the chunk's last row)`` and
``dgk_j = sum_{i >= j} d bk_i - [before] q_j dq_j``; the value side uses ``do_j o_j`` and
``v_j dv_j`` in their places.
"""

from __future__ import annotations

import textwrap

from scandsl.lowering import chunk_vector_shared as shared
from scandsl.lowering import chunk_vector_split as split
from scandsl.lowering import chunk_vector_templates as tpl

from scandsl._core import CoreSig, Decay, Readout

__all__ = ["generate_source", "module_name", "slots", "fill"]


def module_name(sig: CoreSig) -> str:
    return f"chunk_vector_{sig.decay.value}" + ("_before" if sig.readout is Readout.BEFORE else "")


def _code(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def _has_key(sig: CoreSig) -> bool:
    return sig.decay in (Decay.KEY, Decay.OUTER)


def _has_value(sig: CoreSig) -> bool:
    return sig.decay in (Decay.VALUE, Decay.OUTER)


# ---------------------------------------------------------------- state walks (both axes)

_STATE_KEY = """
    # with FUSED_CUMSUM (fwd_cumsum "fused" or "state") gk_cum holds the raw log-gates: the chunk's sums here
    bk = cum_gates(gk_cum, bos, rows, L, offs_k, i_h, H, K, FUSED_CUMSUM)  # [C, BK]
    bk_last = gate_row(bk, gk_cum, bos, L - 1, L, offs_k, i_h, H, K, FUSED_CUMSUM)  # [BK] the whole chunk's
    if STORE_CUM:  # fwd_cumsum="state": the sums, once per K-block, for the kernels after this walk
        if i_v == 0:
            store_rows(gk_out, bk, bos, rows, L, offs_k, i_h, H, K)
    h = h * tl.exp(bk_last)[:, None]
    b_k = b_k * tl.exp(tl.minimum(bk_last[None, :] - bk, 0.0))  # keys decayed to the chunk end
"""
_STATE_VALUE = """
    bv_last = load_row(gv_cum, bos, L - 1, L, offs_v, i_h, H, V)  # [BV] log-decay of the whole chunk
    bv = load_rows(gv_cum, bos, rows, L, offs_v, i_h, H, V)  # [C, BV]
    h = h * tl.exp(bv_last)[None, :]
    b_v = b_v * tl.exp(tl.minimum(bv_last[None, :] - bv, 0.0))  # values decayed to the chunk end
"""
_STATE_BWD_KEY = """
    bk_last = load_row(gk_cum, bos, L - 1, L, offs_k, i_h, H, K)  # [BK]
    bkq = load_rows(gk_cum, bos, rows - QSHIFT, L, offs_k, i_h, H, K)  # [C, BK] decay the read-out sees
    dh = dh * tl.exp(bk_last)[:, None]
    b_q = b_q * tl.exp(bkq)
"""
_STATE_BWD_VALUE = """
    bv_last = load_row(gv_cum, bos, L - 1, L, offs_v, i_h, H, V)  # [BV]
    bvq = load_rows(gv_cum, bos, rows - QSHIFT, L, offs_v, i_h, H, V)  # [C, BV]
    dh = dh * tl.exp(bv_last)[None, :]
    b_do = b_do * tl.exp(bvq)
"""

# ---------------------------------------------------------------- forward outputs

_KEY_SCORES_GATED = """
    bkq = load_rows(gk_cum, bos, rows_i - QSHIFT, L, offs_k, i_h, H, K)  # [SC, BK] decay the queries see
    ref = load_row(gk_cum, bos, I * SC - QSHIFT, L, offs_k, i_h, H, K)  # [BK] at the sub-chunk's first query
    bk = load_rows(gk_cum, bos, rows_c, L, offs_k, i_h, H, K)  # [C, BK]
    o_in += tl.dot((b_q * tl.exp(bkq)).to(DT), b_h, input_precision=PREC)
    q_r = (b_q * tl.exp(tl.minimum(bkq - ref[None, :], 0.0))).to(DT)  # rebased on ref: exponent <= 0
    k_r = (b_k * tl.exp(tl.minimum(ref[None, :] - bk, 0.0))).to(DT)  # exact for keys before the sub-chunk
    a_off += tl.dot(q_r, tl.trans(k_r), input_precision=PREC)
"""
_KEY_SCORES_PLAIN = """
    b_qd = b_q.to(DT)
    o_in += tl.dot(b_qd, b_h, input_precision=PREC)
    a_off += tl.dot(b_qd, tl.trans(b_k.to(DT)), input_precision=PREC)
    b_ki = load_rows(k, bos, rows_i, L, offs_k, i_h, H, K)  # [SC, BK]
    a_dg += tl.dot(b_qd, tl.trans(b_ki.to(DT)), input_precision=PREC)
"""

_VALUE_APPLY_GATED = """
    bvq = load_rows(gv_cum, bos, rows_i - QSHIFT, L, offs_v, i_h, H, V)  # [SC, BV] decay the queries see
    vref = load_row(gv_cum, bos, I * SC - QSHIFT, L, offs_v, i_h, H, V)  # [BV] at the sub-chunk's first query
    bv = load_rows(gv_cum, bos, rows_c, L, offs_v, i_h, H, V)  # [C, BV]
    bvi = load_rows(gv_cum, bos, rows_i, L, offs_v, i_h, H, V)  # [SC, BV]
    v_r = (b_v * tl.exp(tl.minimum(vref[None, :] - bv, 0.0))).to(DT)
    b_o = tl.exp(bvq) * o_in
    b_o += tl.exp(tl.minimum(bvq - vref[None, :], 0.0)) * tl.dot(a_off.to(DT), v_r, input_precision=PREC)
    b_o += diag_apply(a_dg, b_vi, bvq, bvi)
"""
_VALUE_APPLY_PLAIN = """
    b_o = o_in + tl.dot(a_off.to(DT), b_v.to(DT), input_precision=PREC)
    b_o += tl.dot(a_dg.to(DT), b_vi.to(DT), input_precision=PREC)
"""

_STORE_OX = "store_rows(ox, b_o, bos, rows_i, L, offs_v, i_h, H, V)  # o without its zero-step pair"

# ---------------------------------------------------------------- backward: dv (and dgv)

_KEY_SCORES_T_GATED = """
    bkj = load_rows(gk_cum, bos, rows_j, L, offs_k, i_h, H, K)  # [SC, BK]
    bkq = load_rows(gk_cum, bos, rows_c - QSHIFT, L, offs_k, i_h, H, K)  # [C, BK]
    bk_last = load_row(gk_cum, bos, L - 1, L, offs_k, i_h, H, K)  # [BK]
    ref = load_row(gk_cum, bos, last_j, L, offs_k, i_h, H, K)  # [BK] at the sub-chunk's last key
    d_st += tl.dot((b_kj * tl.exp(tl.minimum(bk_last[None, :] - bkj, 0.0))).to(DT), b_dh, input_precision=PREC)
    k_r = (b_kj * tl.exp(tl.minimum(ref[None, :] - bkj, 0.0))).to(DT)
    q_r = (b_q * tl.exp(tl.minimum(bkq - ref[None, :], 0.0))).to(DT)  # exact for queries after the sub-chunk
    at_off += tl.dot(k_r, tl.trans(q_r), input_precision=PREC)
"""
_KEY_SCORES_T_PLAIN = """
    b_kjd = b_kj.to(DT)
    d_st += tl.dot(b_kjd, b_dh, input_precision=PREC)
    at_off += tl.dot(b_kjd, tl.trans(b_q.to(DT)), input_precision=PREC)
    b_qj = load_rows(q, bos, rows_j, L, offs_k, i_h, H, K) * scale  # [SC, BK]
    at_dg += tl.dot(b_kjd, tl.trans(b_qj.to(DT)), input_precision=PREC)
"""
_KEY_DIAG_T_GATED = """
    for d0 in range(0, K, BKD):  # at_dg[j, i] = sum_k k_jk q_ik exp(bkq_ik - bk_jk), elementwise in fp32
        offs_d = d0 + tl.arange(0, BKD)
        at_dg += diag_scores(
            load_rows(k, bos, rows_j, L, offs_d, i_h, H, K),
            -load_rows(gk_cum, bos, rows_j, L, offs_d, i_h, H, K),
            load_rows(q, bos, rows_j, L, offs_d, i_h, H, K) * scale,
            -load_rows(gk_cum, bos, rows_j - QSHIFT, L, offs_d, i_h, H, K),
        )
"""
_VALUE_APPLY_T_GATED = """
    bvj = load_rows(gv_cum, bos, rows_j, L, offs_v, i_h, H, V)  # [SC, BV]
    bvq = load_rows(gv_cum, bos, rows_c - QSHIFT, L, offs_v, i_h, H, V)  # [C, BV]
    bvqj = load_rows(gv_cum, bos, rows_j - QSHIFT, L, offs_v, i_h, H, V)  # [SC, BV]
    bv_last = load_row(gv_cum, bos, L - 1, L, offs_v, i_h, H, V)  # [BV]
    vref = load_row(gv_cum, bos, last_j, L, offs_v, i_h, H, V)  # [BV] at the sub-chunk's last key
    do_r = (b_do * tl.exp(tl.minimum(bvq - vref[None, :], 0.0))).to(DT)
    b_dvs = tl.exp(tl.minimum(bv_last[None, :] - bvj, 0.0)) * d_st  # through the state handed on
    b_dvi = tl.exp(tl.minimum(vref[None, :] - bvj, 0.0)) * tl.dot(at_off.to(DT), do_r, input_precision=PREC)
    b_dvi += diag_apply(at_dg, b_doj, -bvj, -bvqj)
"""
_VALUE_APPLY_T_PLAIN = """
    b_dvs = d_st  # through the state handed on
    b_dvi = tl.dot(at_off.to(DT), b_do.to(DT), input_precision=PREC)
    b_dvi += tl.dot(at_dg.to(DT), b_doj.to(DT), input_precision=PREC)
"""


def _state_paths(axis: str, other_decays: bool) -> str:
    """Prefix-sum form of the state-path terms of the ``axis`` log-decay gradient.

    Row j's log-decay reaches the state handed on (dh_end) through h0 (``st0``, every row) and
    through every key row j' < j (``y_all[j']`` = x_j' * dx_state_j'). Summing those forward,
    instead of "all rows minus rows >= j", keeps the result free of cancellation.
    """
    if axis == "key":  # y_all [C, BK]: rows of dh_end v_j
        x, d, other, od, ocum, BX, BO = "k", "K", "v", "V", "gv_cum", "BK", "BV"
        loop, offs, sum_axis = "for v0 in range(0, V, BV):", "offs_v = v0 + tl.arange(0, BV)", 1
        prod = "tl.dot(b_o.to(DT), tl.trans(dh.to(DT)), input_precision=PREC)"
        odecay = "h0 = h0 * tl.exp(o_last)[None, :]"
    else:  # y_all [C, BV]: rows of k_j dh_end
        x, d, other, od, ocum, BX, BO = "v", "V", "k", "K", "gk_cum", "BV", "BK"
        loop, offs, sum_axis = "for k0 in range(0, K, BK):", "offs_k = k0 + tl.arange(0, BK)", 0
        prod = "tl.dot(b_o.to(DT), dh.to(DT), input_precision=PREC)"
        odecay = "h0 = h0 * tl.exp(o_last)[:, None]"
    xcum = "gk_cum" if axis == "key" else "gv_cum"
    ox, oo = ("offs_k", "offs_v") if axis == "key" else ("offs_v", "offs_k")
    lines = [
        f"# state paths of the {axis} log-decay gradient, summed forward (see _state_paths)",
        f"st0 = tl.full([{BX}], 0.0, dtype=tl.float32)",
        f"y_all = tl.full([C, {BX}], 0.0, dtype=tl.float32)",
        loop,
        f"    {offs}",
        "    h0 = load_state(hs, slot, i_h, offs_k, offs_v, H, K, V)  # [BK, BV]",
        "    dh = load_state(dhs, slot, i_h, offs_k, offs_v, H, K, V)  # [BK, BV]",
        f"    b_o = load_rows({other}, bos, rows_c, L, {oo}, i_h, H, {od})  # [C, {BO}]",
    ]
    if other_decays:
        lines += [
            f"    o_last = load_row({ocum}, bos, L - 1, L, {oo}, i_h, H, {od})",
            f"    {odecay}",
            f"    b_o = b_o * tl.exp(tl.minimum(o_last[None, :] - load_rows({ocum}, bos, rows_c, L, {oo}, i_h, H, {od}), 0.0))",
        ]
    lines += [
        f"    st0 += tl.sum(h0 * dh, axis={sum_axis})",
        f"    y_all += {prod}",
        f"x_last = load_row({xcum}, bos, L - 1, L, {ox}, i_h, H, {d})  # [{BX}]",
        "st0 = st0 * tl.exp(x_last)",
        f"x_end = tl.exp(tl.minimum(x_last[None, :] - load_rows({xcum}, bos, rows_c, L, {ox}, i_h, H, {d}), 0.0))",
        f"y_all = load_rows({x}, bos, rows_c, L, {ox}, i_h, H, {d}) * x_end * y_all  # [C, {BX}]",
        f"carry = tl.full([{BX}], 0.0, dtype=tl.float32)  # reverse cumulative sum over later sub-chunks",
    ]
    return "\n".join(lines)


# axis -> (rows, sub-chunk index, query-side term, key-side intra term, state-path term, width, output)
_GATE_GRAD_TERMS = {
    "key": ("rows_i", "I", "b_qi * b_dq", "b_ki * b_dki", "b_ki * b_dks", "K", "dgk"),
    "value": ("rows_j", "J", "b_doj * b_oj", "b_vj * b_dvi", "b_vj * b_dvs", "V", "dgv"),
}


def _gate_grad(axis: str, before: bool) -> str:
    """The log-decay gradient of one sub-chunk's rows (rows ``rows``, block index ``blk``).

    ``xq`` = query-side terms (q dq or do o), ``xk`` = key-side intra terms (k dk or v dv), both
    without the zero-step pair; ``y`` = this sub-chunk's state-path terms.
    """
    rows, blk, xq, xk, y, width, dst = _GATE_GRAD_TERMS[axis]
    lines = []
    if axis == "value":
        lines += [
            "b_oj = load_rows(ox, bos, rows_j, L, offs_v, i_h, H, V)  # o without its zero-step pair",
            "b_vj = load_rows(v, bos, rows_j, L, offs_v, i_h, H, V)",
        ]
    lines.append(f"xq = {xq}")
    if before:
        lines.append(
            f"xq = tl.where({rows}[:, None] == 0, 0.0, xq)  # row 0 reads h0: no gate of the chunk reaches it"
        )
    lines += [
        f"x = xq - {xk}",
        f"y = tl.where({rows}[:, None] == L - 1, 0.0, {y})  # the last row's state path reaches no row here",
        f"st = st0 + tl.sum(tl.where(rows_c[:, None] < {blk} * SC, y_all, 0.0), axis=0)  # keys before the sub-chunk",
        "b_dg = tl.cumsum(x, axis=0, reverse=True) + carry[None, :] + st[None, :] + tl.cumsum(y, axis=0) - y",
    ]
    if before:
        lines.append("b_dg -= xq  # o_t reads S_{t-1}: the gate of step t does not reach o_t")
    lines += [
        "carry += tl.sum(x, axis=0)",
        f"store_rows({dst}, b_dg, bos, {rows}, L, offs_{width.lower()}, i_h, H, {width})",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- backward: dq, dk (and dgk)

_VALUE_SCORES_GATED = """
    bvqi = load_rows(gv_cum, bos, rows_i - QSHIFT, L, offs_v, i_h, H, V)  # [SC, BV]
    bvi = load_rows(gv_cum, bos, rows_i, L, offs_v, i_h, H, V)  # [SC, BV]
    bv = load_rows(gv_cum, bos, rows_c, L, offs_v, i_h, H, V)  # [C, BV]
    bvq = load_rows(gv_cum, bos, rows_c - QSHIFT, L, offs_v, i_h, H, V)  # [C, BV]
    bv_last = load_row(gv_cum, bos, L - 1, L, offs_v, i_h, H, V)  # [BV]
    vref = load_row(gv_cum, bos, I * SC - QSHIFT, L, offs_v, i_h, H, V)  # [BV] first query of the sub-chunk
    vref_t = load_row(gv_cum, bos, last_i, L, offs_v, i_h, H, V)  # [BV] last key of the sub-chunk
    dq_in += tl.dot((b_doi * tl.exp(bvqi)).to(DT), tl.trans(b_h), input_precision=PREC)
    v_end = (b_vi * tl.exp(tl.minimum(bv_last[None, :] - bvi, 0.0))).to(DT)
    dk_st += tl.dot(v_end, tl.trans(b_dh), input_precision=PREC)
    do_r = (b_doi * tl.exp(tl.minimum(bvqi - vref[None, :], 0.0))).to(DT)
    v_r = (b_v * tl.exp(tl.minimum(vref[None, :] - bv, 0.0))).to(DT)
    da_off += tl.dot(do_r, tl.trans(v_r), input_precision=PREC)
    vt_r = (b_vi * tl.exp(tl.minimum(vref_t[None, :] - bvi, 0.0))).to(DT)
    dot_r = (b_do * tl.exp(tl.minimum(bvq - vref_t[None, :], 0.0))).to(DT)
    dat_off += tl.dot(vt_r, tl.trans(dot_r), input_precision=PREC)
"""
_VALUE_SCORES_PLAIN = """
    b_doid = b_doi.to(DT)
    b_vid = b_vi.to(DT)
    dq_in += tl.dot(b_doid, tl.trans(b_h), input_precision=PREC)
    dk_st += tl.dot(b_vid, tl.trans(b_dh), input_precision=PREC)
    da_off += tl.dot(b_doid, tl.trans(b_v.to(DT)), input_precision=PREC)
    dat_off += tl.dot(b_vid, tl.trans(b_do.to(DT)), input_precision=PREC)
    da_dg += tl.dot(b_doid, tl.trans(b_vid), input_precision=PREC)
"""
_VALUE_DIAG_GATED = """
    for d0 in range(0, V, BVD):  # da inside the sub-chunk, elementwise in fp32
        offs_d = d0 + tl.arange(0, BVD)
        da_dg += diag_scores(
            load_rows(do, bos, rows_i, L, offs_d, i_h, H, V),
            load_rows(gv_cum, bos, rows_i - QSHIFT, L, offs_d, i_h, H, V),
            load_rows(v, bos, rows_i, L, offs_d, i_h, H, V),
            load_rows(gv_cum, bos, rows_i, L, offs_d, i_h, H, V),
        )
"""
_KEY_APPLY_GATED = (
    tpl.key_intra("tl.exp(bkqi) * dq_in + ")
    + """\
bk_last = load_row(gk_cum, bos, L - 1, L, offs_k, i_h, H, K)  # [BK]
b_dks = tl.exp(tl.minimum(bk_last[None, :] - bki, 0.0)) * dk_st  # through the state handed on
"""
)
_KEY_APPLY_PLAIN = """
    b_dq = dq_in + tl.dot(da_off.to(DT), b_k.to(DT), input_precision=PREC)
    b_dq += tl.dot(da_dg.to(DT), b_ki.to(DT), input_precision=PREC)
    b_dks = dk_st  # through the state handed on
    b_dki = tl.dot(dat_off.to(DT), b_q.to(DT), input_precision=PREC)
    b_dki += tl.dot(tl.trans(da_dg).to(DT), b_qi.to(DT), input_precision=PREC)
"""


def slots(sig: CoreSig) -> dict[str, str]:
    """Slot name -> source text for one signature (decay KEY / VALUE / OUTER, identity transition)."""
    key, value = _has_key(sig), _has_value(sig)
    before = sig.readout is Readout.BEFORE
    if before:
        readout = "before (o_t = S_{t-1} q_t)"
        qshift = (
            "# o_t reads S_{t-1}: the query at row i sees the cumulative decay of row i - 1, and\n"
            "# only keys j < i inside a chunk.\n"
            "QSHIFT = tl.constexpr(1)"
        )
    else:
        readout = "after (o_t = S_t q_t)"
        qshift = (
            "# o_t reads S_t: the query at row i sees the cumulative decay of row i, and keys j <= i.\n"
            "QSHIFT = tl.constexpr(0)"
        )
    both = [_code(_STATE_KEY) if key else "", _code(_STATE_VALUE) if value else ""]
    both_bwd = [_code(_STATE_BWD_KEY) if key else "", _code(_STATE_BWD_VALUE) if value else ""]
    return {
        "describe": sig.describe(),
        "readout": readout,
        "qshift": qshift,
        "state_decay": "\n".join(s for s in both if s),
        "state_decay_bwd": "\n".join(s for s in both_bwd if s),
        "key_scores": _code(_KEY_SCORES_GATED if key else _KEY_SCORES_PLAIN),
        "key_diag": _code(tpl.KEY_DIAG) if key else "",
        "value_apply": _code(_VALUE_APPLY_GATED if value else _VALUE_APPLY_PLAIN),
        "key_scores_t": _code(_KEY_SCORES_T_GATED if key else _KEY_SCORES_T_PLAIN),
        "key_diag_t": _code(_KEY_DIAG_T_GATED) if key else "",
        "value_apply_t": _code(_VALUE_APPLY_T_GATED if value else _VALUE_APPLY_T_PLAIN),
        "value_carry": _state_paths("value", key) if value else "",
        "value_gate_grad": _gate_grad("value", before) if value else "",
        "store_ox": _STORE_OX if value else "",
        "value_scores": _code(_VALUE_SCORES_GATED if value else _VALUE_SCORES_PLAIN),
        "value_diag": _code(_VALUE_DIAG_GATED) if value else "",
        "key_apply": _code(_KEY_APPLY_GATED if key else _KEY_APPLY_PLAIN),
        "key_carry": _state_paths("key", value) if key else "",
        "key_gate_grad": _gate_grad("key", before) if key else "",
    }


def fill(template: str, values: dict[str, str]) -> str:
    """Substitute ``@name@`` markers. A marker alone on its line is a block slot: its text is
    indented like the marker (an empty slot drops the line); otherwise it is replaced inline."""
    out: list[str] = []
    for line in template.splitlines():
        stripped = line.strip()
        name = stripped[1:-1]
        if len(stripped) > 2 and stripped[0] == stripped[-1] == "@" and name in values:
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + s if s else "" for s in values[name].splitlines())
            continue
        for key, text in values.items():
            line = line.replace(f"@{key}@", text)
        out.append(line)
    return "\n".join(out) + "\n"


def generate_source(sig: CoreSig, config: dict | None = None) -> str:
    """Triton source of every kernel for ``sig``.

    ``config`` is accepted for the strategy API's symmetry: tile sizes enter the kernels as
    ``tl.constexpr`` arguments, so one module serves every config of a signature.
    """
    if sig.decay not in (Decay.KEY, Decay.VALUE, Decay.OUTER):
        raise ValueError(f"chunk_vector: decay must be KEY, VALUE or OUTER, got {sig.decay.name}")
    template = tpl.HEADER + tpl.CUMSUM + tpl.FWD_STATE + tpl.FWD_O + tpl.BWD_STATE + tpl.BWD_DV + tpl.BWD_DQK
    template += shared.BWD_DA + shared.BWD_DQK_SHARED  # dqk_mode="shared_scores"
    if sig.decay is Decay.KEY:
        template += split.FWD_SPLIT + split.BWD_DV_SPLIT + split.BWD_DQK_SPLIT  # the split modes
    values = slots(sig)
    values.update(shared.slots(values["value_scores"], _has_value(sig)))
    return fill(template, values)
