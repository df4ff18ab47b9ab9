"""Named code slots of the chunked scalar-decay kernels: where a :class:`CoreSig` changes the source.

The kernels hold the state transposed, ``h = S^T`` (``[K, V]``, the API layout), and work on a
chunk of ``C`` steps at a time. Within a chunk, with ``g`` the per-step log-decay:

- ``b_gc[i]`` = inclusive cumulative log-decay from the chunk start to step ``i`` (``<= 0``);
- ``b_gq[i]`` = the log-decay the read-out at step ``i`` sees: ``b_gc[i]`` when reading ``S_t``
  (:attr:`Readout.AFTER`), ``b_gc[i] - b_g[i]`` when reading ``S_{t-1}`` (:attr:`Readout.BEFORE`);
- ``b_gn``   = log-decay of the whole chunk.

Every factor a slot applies is ``exp`` of a difference that is ``<= 0`` on the causal side
(``gq[s] - gc[j]`` for ``j <= s``, ``gn - gc[j]``, ``gq[s]``), so nothing overflows however long
the sequence.

Slots (each a function of the signature returning Triton source text):

- ``gates``        load ``g`` for the chunk and build ``b_gc``, ``b_gq``, ``b_gn`` (nothing for NONE);
- ``causal_qk`` / ``causal_kq``  which (query ``s``, key ``j``) pairs interact: ``j <= s`` after, ``j < s`` before;
- ``mask_qk`` / ``mask_kq``   causal mask and pair decay ``exp(gq[s] - gc[j])`` on the ``[C, C]`` score
  matrix ``b_s`` (rows ``s``, columns ``j``) or ``b_st`` (rows ``j``, columns ``s``); the exponent is
  masked to ``-inf`` first, so no ``exp`` of a positive difference is ever taken;
- ``decay_q``      the per-row factor ``exp(gq[s])`` of a term read from the chunk-start state;
- ``k_to_end`` / ``v_to_end``  keys / values decayed to the chunk end, ``x_j exp(gn - gc[j])``, in the
  input dtype; ``decay_k_end`` the same row factor on an fp32 product;
- ``q_decayed`` / ``do_decayed``  queries / output gradients decayed from the chunk start,
  ``x_s exp(gq[s])``, in the input dtype.

Where a per-row factor can go on either operand of a product, the kernels put it on the narrower
tile, or on the fp32 result: each decayed copy is a register tile (and a trip through shared
memory on its way to the tensor cores), the main cost of SCALAR over NONE.
- ``decay_state``  the whole-chunk factor ``exp(gn)`` on a carried state;
- ``dg_init_k`` / ``dg_reverse_k`` / ``dg_init_v`` / ``dg_reverse_v``  the log-decay gradient, built
  in the reverse sweeps of the dk and dv programs (nothing for NONE), see ``_dg_rows``.
"""

from __future__ import annotations

from scandsl._core import CoreSig, Decay, Readout

__all__ = ["tag", "slots", "fill"]


def tag(sig: CoreSig) -> str:
    """Readable kernel-module name suffix: ``none``, ``scalar_before``."""
    return sig.decay.value + ("_before" if sig.readout is Readout.BEFORE else "")


def _gates(sig: CoreSig) -> str:
    if sig.decay is Decay.NONE:
        return ""
    gq = "b_gc" if sig.readout is Readout.AFTER else "b_gc - b_g  # the read-out at s sees S_{s-1}"
    return (
        "b_g = tl.load(g + row, mask=m_t, other=0.0).to(tl.float32)  # [C] log-decay per step\n"
        "b_gc = tl.cumsum(b_g, axis=0)  # [C] log-decay from the chunk start, inclusive\n"
        f"b_gq = {gq}\n"
        "b_gn = tl.sum(b_g, axis=0)  # log-decay of the whole chunk"
    )


def _dg_rows(sig: CoreSig, term: str, own: str) -> str:
    """Reverse cumulative sum of one per-step ``term`` ([C]) into this block's row of ``dg``.

    dg_t = sum_{s >= t} (q_s.dq_s - k_s.dk_s) + <S_T, dS_T>, with q_s.dq_s = o_s.do_s: the dk
    programs add ``-k.dk`` over their K-block (and ``<S_T, dS_T>``), the dv programs ``o.do`` over
    their V-block, each into its own row, summed on the host. ``own`` is the part of ``term`` the
    step's own g does not reach (the read-out before the update does not see g_t).
    """
    lines = [
        f"b_x = {term}  # [C]",
        "b_dg = b_dg_carry + tl.sum(b_x, axis=0) - tl.cumsum(b_x, axis=0) + b_x  # [C] sum over steps >= t",
    ]
    if own and sig.readout is Readout.BEFORE:
        lines.append(f"b_dg -= {own}  # the read-out at t reads S_{{t-1}}: its own q.dq does not see g_t")
    lines += [
        "tl.store(dg + i_row.to(tl.int64) * NTH + row, b_dg, mask=m_t)",
        "b_dg_carry += tl.sum(b_x, axis=0)",
    ]
    return "\n".join(lines)


_DG_INIT_K = """\
i_row = i_k  # this program's row of the dg partials
b_dg_carry = tl.sum(tl.zeros([C], dtype=tl.float32), axis=0)  # fp32 scalar carried across chunks
if HAS_DHT:
    # <S_T, dS_T> enters every dg_t of the sequence
    b_dg_carry += tl.sum(tl.sum(tl.load(ht + p_hv, mask=m_hv, other=0.0) * b_dh, axis=1), axis=0)"""

_DG_INIT_V = """\
i_row = NK + i_v  # this program's row of the dg partials, after the K-blocks'
b_dg_carry = tl.sum(tl.zeros([C], dtype=tl.float32), axis=0)  # fp32 scalar carried across chunks"""

_DG_DV_TERM = """\
b_o = tl.load(o + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)  # [C, BV]
b_odo = tl.sum(b_o.to(tl.float32) * b_do.to(tl.float32), axis=1)  # [C] q.dq over this V-block
"""


def slots(sig: CoreSig) -> dict[str, str]:
    """Slot name -> source text for this signature (decay NONE or SCALAR, identity transition)."""
    scalar = sig.decay is Decay.SCALAR
    after = sig.readout is Readout.AFTER
    return {
        "gates": _gates(sig),
        "causal_qk": "o_c[:, None] >= o_c[None, :]" if after else "o_c[:, None] > o_c[None, :]",
        "causal_kq": "o_c[:, None] <= o_c[None, :]" if after else "o_c[:, None] < o_c[None, :]",
        "mask_qk": (
            'b_s = b_s * tl.exp(tl.where(m_qk, b_gq[:, None] - b_gc[None, :], float("-inf")))'
            if scalar
            else "b_s = tl.where(m_qk, b_s, 0.0)"
        ),
        "mask_kq": (
            'b_st = b_st * tl.exp(tl.where(m_kq, b_gq[None, :] - b_gc[:, None], float("-inf")))'
            if scalar
            else "b_st = tl.where(m_kq, b_st, 0.0)"
        ),
        "decay_q": " * tl.exp(b_gq)[:, None]" if scalar else "",
        "k_to_end": "(b_k * tl.exp(b_gn - b_gc)[:, None]).to(b_k.dtype)" if scalar else "b_k",
        "v_to_end": "(b_v * tl.exp(b_gn - b_gc)[:, None]).to(b_v.dtype)" if scalar else "b_v",
        "decay_k_end": " * tl.exp(b_gn - b_gc)[:, None]" if scalar else "",
        "q_decayed": "(b_q * tl.exp(b_gq)[:, None]).to(b_q.dtype)" if scalar else "b_q",
        "do_decayed": "(b_do * tl.exp(b_gq)[:, None]).to(b_do.dtype)" if scalar else "b_do",
        "decay_state": " * tl.exp(b_gn)" if scalar else "",
        "dg_init_k": _DG_INIT_K if scalar else "",
        "dg_reverse_k": _dg_rows(sig, "-tl.sum(b_k.to(tl.float32) * b_dk, axis=1)", "") if scalar else "",
        "dg_init_v": _DG_INIT_V if scalar else "",
        "dg_reverse_v": _DG_DV_TERM + _dg_rows(sig, "b_odo", "b_odo") if scalar else "",
    }


def fill(template: str, values: dict[str, str]) -> str:
    """Substitute ``@name@`` markers. A marker alone on its line is a block slot: its text is
    indented like the marker (and an empty slot drops the line); otherwise it is inline."""
    out: list[str] = []
    for line in template.splitlines():
        stripped = line.strip()
        name = stripped[1:-1]
        if len(stripped) > 2 and stripped[0] == stripped[-1] == "@" and name in values:
            pad = line[: len(line) - len(line.lstrip())]
            out += [pad + text for text in values[name].splitlines()]
            continue
        for key, text in values.items():
            line = line.replace(f"@{key}@", text)
        if "@" in line.split("#")[0] and "@triton" not in line:
            raise ValueError(f"unfilled slot in generated line: {line.strip()!r}")
        out.append(line)
    return "\n".join(out) + "\n"
