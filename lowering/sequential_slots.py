"""Named code slots of the sequential kernels: where a :class:`CoreSig` changes the source.

The kernels keep the state ``S`` (math orientation, ``[V, K]``) restricted to one V-block
as a ``[BV, BK]`` register tile, K the fast axis, so every slot below is written in that
orientation: a key-indexed vector broadcasts as ``x[None, :]``, a value-indexed one as
``x[:, None]``; sums over K are ``axis=1``, over V ``axis=0``.

Slots (each a small function of the signature returning Triton source text):

- ``step_loads``  which per-step operands a pass reads, and how (``load_line``);
- ``static_loads`` time-invariant ``[BV, BK]`` tiles read once per program (``A``, static
  ``k`` / ``q`` / ``gv``);
- ``decay_factor`` the multiplier ``Λ_t`` as an expression broadcastable to ``[BV, BK]``;
- ``input_term`` the rank-one (or per-channel) input ``U_t``;
- ``query_term`` the (scaled) query as something broadcastable to ``[BV, BK]``.
"""

from __future__ import annotations

from scandsl._core import CoreSig, Decay, Readout, Transition

__all__ = [
    "tag",
    "axis_of",
    "load_line",
    "step_operands",
    "static_loads",
    "decay_factor",
    "input_term",
    "query_term",
    "indent",
]


def tag(sig: CoreSig) -> str:
    """Short readable kernel-name suffix: ``key``, ``scalar_delta``, ``channel_kst_qst_gst``."""
    parts = [sig.decay.value]
    if sig.transition is Transition.DELTA:
        parts.append("delta")
    if sig.readout is Readout.BEFORE:
        parts.append("before")
    for flag, short in (("key_static", "kst"), ("query_static", "qst"), ("decay_static", "gst")):
        if getattr(sig, flag):
            parts.append(short)
    return "_".join(parts)


def indent(code: str, n: int) -> str:
    """``code`` indented by ``n`` spaces, with runs of blank lines (empty slots) collapsed."""
    pad = " " * n
    lines = [pad + line if line.strip() else "" for line in code.strip("\n").splitlines()]
    return "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1]))


# Per-step operands: name -> (pointer argument, which axis it runs along).
# "K": a [BK] vector, "V": a [BV] vector, "1": a scalar per (token, head).
_AXIS = {
    "q": "K",
    "k": "K",
    "gk": "K",
    "v": "V",
    "gv": "V",
    "do": "V",
    "u_save": "V",
    "du": "V",
    "g": "1",
    "beta": "1",
}


def axis_of(name: str) -> str:
    """``"K"``, ``"V"`` or ``"1"`` (scalar per token and head) for a per-step operand."""
    return _AXIS[name]


def load_line(name: str, var: str, row: str, guard: str = "") -> str:
    """``var = <load of operand name at token-row row>``.

    With ``guard`` (a prefix, e.g. ``"n"``) the load is predicated on a step that may not
    exist: the caller defines ``{guard}_ok`` (scalar) and the lane limits ``{guard}_K``,
    ``{guard}_V`` (``K``/``V`` when the step exists, else 0).
    """
    axis = _AXIS[name]
    scale = " * scale" if name == "q" else ""
    if axis == "1":
        mask = f", mask={guard}_ok, other=0.0" if guard else ""
        return f"{var} = tl.load({name} + {row}{mask}).to(tl.float32)"
    lane, size = ("o_k", "K") if axis == "K" else ("o_v", "V")
    if guard:
        mask = f"{lane} < {guard}_{size}"
    else:
        mask = f"m_{size.lower()}"
    return f"{var} = tl.load({name} + {row} * {size} + {lane}, mask={mask}, other=0.0).to(tl.float32){scale}"


def step_operands(
    sig: CoreSig, *, grad: bool = False, extra: tuple[str, ...] = (), drop: tuple[str, ...] = ()
) -> list[str]:
    """Operands read at every step, in a fixed order (``q k v`` first, then gates); a pass
    that does not need some of them names them in ``drop``."""
    names = []
    if not sig.query_static:
        names.append("q")
    if not sig.key_static:
        names.append("k")
    names.append("v")
    for gate in ("g", "gk", "gv", "beta"):
        if gate in sig.uses and not (gate == "gv" and sig.decay_static):
            names.append(gate)
    if grad:
        names.append("do")
    names.extend(extra)
    return [n for n in names if n not in drop]


def static_loads(sig: CoreSig) -> str:
    """Tiles that do not change over time, loaded once (the [H, V, K] tensors)."""
    lines = []
    hvk = "i_h.to(tl.int64) * V * K + o_v[:, None] * K + o_k[None, :]"
    if sig.decay is Decay.CHANNEL:
        lines.append("# A[h]: the per-channel log-decay rates, time-invariant")
        lines.append(f"b_A = tl.load(A + {hvk}, mask=m_vk, other=0.0).to(tl.float32)  # [BV, BK]")
        if sig.decay_static:
            lines.append("b_gv = tl.load(gv + i_h * V + o_v, mask=m_v, other=0.0).to(tl.float32)  # [BV]")
            lines.append("b_lam = tl.exp(b_gv[:, None] * b_A)  # [BV, BK] the same Λ at every step")
    if sig.key_static:
        lines.append(f"b_kst = tl.load(k + {hvk}, mask=m_vk, other=0.0).to(tl.float32)  # [BV, BK]")
    if sig.query_static:
        lines.append(f"b_qst = tl.load(q + {hvk}, mask=m_vk, other=0.0).to(tl.float32) * scale  # [BV, BK]")
    return "\n".join(lines)


def decay_factor(sig: CoreSig) -> str | None:
    """Λ_t as an expression broadcastable to [BV, BK], or None for no decay."""
    d = sig.decay
    if d is Decay.NONE:
        return None
    if d is Decay.SCALAR:
        return "tl.exp(b_g)"
    if d is Decay.KEY:
        return "tl.exp(b_gk)[None, :]"
    if d is Decay.VALUE:
        return "tl.exp(b_gv)[:, None]"
    if d is Decay.OUTER:
        # BV + BK exponentials instead of BV * BK
        return "(tl.exp(b_gv)[:, None] * tl.exp(b_gk)[None, :])"
    if sig.decay_static:
        return "b_lam"
    return "tl.exp(b_gv[:, None] * b_A)"


def input_term(sig: CoreSig, value: str = "b_v") -> str:
    """U_t as a [BV, BK] expression, with the value vector named ``value``."""
    if sig.key_static:
        return f"{value}[:, None] * b_kst"
    return f"{value}[:, None] * b_k[None, :]"


def query_term(sig: CoreSig) -> str:
    """The scaled query broadcast to [BV, BK]."""
    return "b_qst" if sig.query_static else "b_q[None, :]"
