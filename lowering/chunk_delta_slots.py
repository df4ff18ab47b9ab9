"""Named code slots of the chunked delta-rule kernels: where a :class:`CoreSig` changes the source.

The kernels hold the state transposed, ``h = S^T`` (``[K, V]``, the API layout), and work on a
chunk of ``C`` steps. With ``g`` the per-step log-decay (SCALAR decay; NONE has no gate at all):

- ``b_G[t]``  inclusive cumulative log-decay from the chunk start to step ``t`` (``<= 0``),
  so ``gamma_t = exp(b_G[t])`` is the decay a chunk-start state has seen by step ``t``;
- ``b_Gl``    log-decay of the whole chunk (``b_G`` at its last valid step);
- ``b_E``     pair decays ``exp(b_G[t] - b_G[s])`` for ``s <= t`` (1 on the diagonal).

Every ``exp`` is of a difference that is ``<= 0`` on the causal side; the non-causal side is
zeroed inside the argument, so nothing overflows however long the sequence.

Slots (a function of the signature returning Triton source text; NONE gives "" or the identity):

- ``gates``       load ``g`` for a ``[C]`` row set and build ``b_G``, ``b_Gl``;
- ``pair_decay``  build ``b_E`` (``[C, C]``, rows ``t``, columns ``s``); ``times_E`` multiplies by it;
  ``pair_decay_t`` / ``times_Et`` the same for its transpose ``b_Et`` (rows ``s``, columns ``t``);
- ``gamma`` / ``times_gamma``   ``b_gam = exp(b_G)``, a row factor on a ``[C, *]`` tile
  (``times_gamma_cols``: a column factor on a transposed ``[*, C]`` tile);
- ``tail`` / ``times_tail``     ``b_tail = exp(b_Gl - b_G)``: decay from step ``t`` to the chunk end
  (``times_tail_cols`` likewise);
- ``decay_state`` the whole-chunk factor ``exp(b_Gl)`` on a carried (gradient) state;
- ``beta_gamma``  ``beta_t gamma_t``, the row factor of the keys the chunk-start state is probed with;
- ``tail_dkh``    decays the key gradient of the hand-off ``(tail k)^T u`` to the chunk end;
- ``dg_init`` / ``dg_accumulate`` / ``dg_finish``  the log-decay gradient (nothing for NONE), see
  :mod:`scandsl.lowering.chunk_delta_source`;
- ``block_gates`` / ``block_pair_decay`` the same gates for one 16-step sub-block of the solve.
"""

from __future__ import annotations

import re

from scandsl._core import CoreSig, Decay

__all__ = ["slots", "block_gates", "block_pair_decay", "block_beta_gamma", "fill"]


_MARKER = re.compile(r"@[a-z_]+@")


def _scalar(sig: CoreSig) -> bool:
    return sig.decay is Decay.SCALAR


def slots(sig: CoreSig) -> dict[str, str]:
    """Slot texts for the per-chunk kernels (rows ``r``, mask ``m_t``, step index ``o_c``)."""
    s = _scalar(sig)
    return {
        "gates": (
            "b_g = tl.load(g + r * H + i_h, mask=m_t, other=0.0).to(tl.float32)  # [C] log-decay per step\n"
            "b_G = tl.cumsum(b_g, axis=0)  # [C] log-decay from the chunk start, inclusive\n"
            "b_Gl = tl.sum(b_g, axis=0)  # log-decay of the whole chunk"
            if s
            else ""
        ),
        "pair_decay": (
            "b_E = tl.exp(tl.where(causal, b_G[:, None] - b_G[None, :], 0.0))  # [C, C] exp(G_t - G_s), s <= t"
            if s
            else ""
        ),
        "times_E": " * b_E" if s else "",
        "pair_decay_t": (
            "b_Et = tl.exp(tl.where(anti, b_G[None, :] - b_G[:, None], 0.0))  # [C, C] E^T: row s, column t >= s"
            if s
            else ""
        ),
        "times_Et": " * b_Et" if s else "",
        "gamma": "b_gam = tl.exp(b_G)  # [C] decay since the chunk start" if s else "",
        "times_gamma": " * b_gam[:, None]" if s else "",
        "times_gamma_cols": " * b_gam[None, :]" if s else "",
        "tail": "b_tail = tl.exp(b_Gl - b_G)  # [C] decay from step t to the chunk end" if s else "",
        "times_tail": " * b_tail[:, None]" if s else "",
        "times_tail_cols": " * b_tail[None, :]" if s else "",
        "decay_state": " * tl.exp(b_Gl)" if s else "",
        "beta_gamma": "(b_b * b_gam)" if s else "b_b",
        "tail_dkh": "b_dkh = b_dkh * b_tail[:, None]" if s else "",
        "dg_init": "b_hdh = 0.0  # <h0, dh_end>: the whole-chunk decay's share of dg" if s else "",
        "dg_accumulate": (
            "b_hdh += tl.sum(tl.sum(b_h.to(tl.float32) * b_dhe.to(tl.float32), axis=1), axis=0)" if s else ""
        ),
        "dg_finish": _dg_finish() if s else "",
    }


def _dg_finish() -> str:
    # d/dG_t of everything the chunk computes, then g's gradient is its reverse cumsum (G = cumsum g).
    # Term by term (see chunk_delta_source) this collapses to q.dq - k.dk + 2 beta dbeta on every
    # step, plus <h_end, dh_end> = gamma_C <h0, dh_end> + sum_s k_s . dk_h_s on the last step.
    return (
        "b_dG = tl.sum(b_q * b_dq, axis=1) - tl.sum(b_kf * b_dk, axis=1) + 2.0 * b_b * b_db  # [C]\n"
        "b_end = tl.exp(b_Gl) * b_hdh + tl.sum(tl.sum(b_kf * b_dkh, axis=1), axis=0)\n"
        "b_dG += tl.where(o_c == n_valid - 1, b_end, 0.0)\n"
        "b_dg = tl.cumsum(b_dG, axis=0, reverse=True)  # [C] G = cumsum(g) within the chunk\n"
        "tl.store(dg + p_part + r * H + i_h, b_dg, mask=m_t)  # this K-block's share"
    )


def block_gates(sig: CoreSig, j: int) -> list[str]:
    """Load sub-block ``j``'s gates; ``b_G{j}`` continues the cumulative sum of the blocks before."""
    if not _scalar(sig):
        return []
    carry = "" if j == 0 else f" + b_gsum{j - 1}"
    lines = [
        f"b_g{j} = tl.load(g + r{j} * H + i_h, mask=m{j}, other=0.0).to(tl.float32)  # [16]",
        f"b_G{j} = tl.cumsum(b_g{j}, axis=0){carry}  # [16] log-decay from the chunk start",
        f"b_gsum{j} = tl.sum(b_g{j}, axis=0){carry}",
    ]
    return lines


def block_pair_decay(sig: CoreSig, i: int, j: int) -> str:
    """Factor turning ``k_t . k_s`` into ``exp(G_t - G_s) k_t . k_s`` for sub-blocks ``i >= j``."""
    if not _scalar(sig):
        return ""
    if i == j:
        return f" * tl.exp(tl.where(strict, b_G{i}[:, None] - b_G{i}[None, :], 0.0))"
    return f" * tl.exp(b_G{i}[:, None] - b_G{j}[None, :])"


def block_beta_gamma(sig: CoreSig, j: int) -> str:
    return f"b_b{j} * tl.exp(b_G{j})" if _scalar(sig) else f"b_b{j}"


def fill(template: str, values: dict[str, str]) -> str:
    """Substitute ``@name@`` markers. A marker alone on its line is a block slot: its text is
    indented like the marker (an empty slot drops the line); otherwise it is inline."""
    out: list[str] = []
    for line in template.splitlines():
        stripped = line.strip()
        name = stripped[1:-1]
        if len(stripped) > 2 and stripped[0] == stripped[-1] == "@" and name in values:
            pad = line[: len(line) - len(line.lstrip())]
            out += [pad + text if text else "" for text in values[name].splitlines()]
            continue
        for key, text in values.items():
            line = line.replace(f"@{key}@", text)
        if _MARKER.search(line):
            raise ValueError(f"unfilled slot in generated line: {line.strip()!r}")
        out.append(line)
    return "\n".join(out) + "\n"
