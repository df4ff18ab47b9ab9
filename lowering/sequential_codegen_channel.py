"""Backward of the sequential strategy for per-channel decays (``Decay.CHANNEL``).

Same grid and register tile as the forward (see ``sequential_codegen``). A per-element
decay ``log Λ_t[v, k] = gv_t[v] · A[v, k]`` needs ``dS_t ⊙ Λ_t ⊙ S_{t-1}`` element by
element at every step (no reverse-cumsum identity reduces it: ``A`` weights the sum), so
this backward recomputes states from checkpoints:

1. forward pass: recompute ``S_t``; ``dq_t = scale · S_t^T do_t`` (or, with a static
   query, accumulate ``Σ_t S_t ⊙ do_t``); store the state at every chunk start
   (every ``CK`` steps) into ``ckpt``;
2. reverse pass over chunks: reload the chunk's checkpoint, recompute its ``CK`` states
   into a per-program ``scratch`` buffer, then walk the chunk backwards with
   ``dS`` in registers: ``E_t = dS_t ⊙ Λ_t ⊙ S_{t-1}`` gives ``d gv_t = Σ_k E_t ⊙ A`` and
   ``dA += gv_t ⊙ E_t``; ``dS_{t-1} = Λ_t ⊙ dS_t``.

Cost: one extra forward sweep plus ``CK·BV·K`` fp32 of scratch traffic per chunk; the
scratch of one program is small and stays in L2 for the usual per-channel sizes (N ≤ 64).
"""

from __future__ import annotations

from scandsl.lowering.sequential_codegen import (
    HEADER,
    PROLOGUE,
    expand_states,
    pipelined_loop,
    state_in,
    state_strides,
)
from scandsl.lowering.sequential_slots import (
    decay_factor,
    indent,
    input_term,
    load_line,
    query_term,
    static_loads,
    step_operands,
    tag,
)

from scandsl._core import CoreSig, Decay, Readout

__all__ = ["channel_backward_source"]


def _grad_read(sig: CoreSig) -> str:
    if sig.query_static:
        return "b_dqst += b_do[:, None] * h  # Σ_t do_t ⊙ S_t (times scale at the end)"
    return (
        "b_dq = tl.sum(h * b_do[:, None], axis=0) * scale  # [BK] partial over V-blocks\n"
        "tl.store(dq_part + p_part + row * K + o_k, b_dq, mask=m_k)"
    )


def _forward_grad_step(sig: CoreSig) -> str:
    lines = [
        "# the state at each chunk start is a checkpoint for the reverse pass",
        "tl.store(ckpt + p_ck + (i // CK) * K * V, h, mask=m_vk & (i % CK == 0))",
    ]
    if sig.readout is Readout.BEFORE:
        lines.append(_grad_read(sig))
    lines += [f"h = h * {decay_factor(sig)}", f"h += {input_term(sig)}"]
    if sig.readout is Readout.AFTER:
        lines.append(_grad_read(sig))
    return "\n".join(lines)


def _reverse_step(sig: CoreSig) -> str:
    lines = [
        "b_hp = tl.load(scratch + p_s + j * BV * BK)  # [BV, BK] S_{t-1}, recomputed",
    ]
    dqo = f"dh += b_do[:, None] * {query_term(sig)}"
    if sig.readout is Readout.AFTER:
        lines.append(dqo)
    if sig.key_static:
        lines += [
            "b_dv = tl.sum(dh * b_kst, axis=1)  # [BV]",
            "b_dkst += b_v[:, None] * dh",
        ]
    else:
        lines += [
            "b_dv = tl.sum(dh * b_k[None, :], axis=1)  # [BV]",
            "b_dk = tl.sum(dh * b_v[:, None], axis=0)  # [BK] partial over V-blocks",
            "tl.store(dk_part + p_part + row * K + o_k, b_dk, mask=m_k)",
        ]
    lines += [
        "tl.store(dv + row * V + o_v, b_dv, mask=m_v)",
        f"b_lam = {decay_factor(sig)}" if not sig.decay_static else "# b_lam is time-invariant",
        "b_e = dh * b_lam * b_hp  # [BV, BK] dL/d log Λ_t, element by element",
    ]
    if sig.decay_static:
        lines.append("b_esum += b_e  # d gv = Σ_t Σ_k E_t ⊙ A, dA = gv ⊙ Σ_t E_t")
    else:
        lines += [
            "tl.store(dgv + row * V + o_v, tl.sum(b_e * b_A, axis=1), mask=m_v)",
            "b_dA += b_gv[:, None] * b_e",
        ]
    lines.append("dh = dh * b_lam")
    if sig.readout is Readout.BEFORE:
        lines.append(dqo)
    return "\n".join(lines)


def channel_backward_source(sig: CoreSig, depth: int = 2) -> tuple[str, str]:
    """(kernel name, module source) of the backward kernel for a CHANNEL decay."""
    if sig.decay is not Decay.CHANNEL:
        raise ValueError("channel_backward_source: only for Decay.CHANNEL signatures")
    name = f"seq_bwd_{tag(sig)}"
    pointers = ["q", "k", "v", "gv", "A", "do", "dht", "h0"]
    pointers.append("dqst_part" if sig.query_static else "dq_part")
    pointers.append("dkst_part" if sig.key_static else "dk_part")
    pointers += [
        "dv",
        "dgv_part" if sig.decay_static else "dgv",
        "dA_part",
        "dh0",
        "ckpt",
        "scratch",
        "cu_seqlens",
    ]
    recompute_ops = step_operands(sig, drop=("q",))
    reverse_ops = step_operands(sig, grad=True)
    rloads = "\n".join(load_line(n, f"b_{n}", "row", "") for n in reverse_ops)
    cloads = "\n".join(load_line(n, f"b_{n}", "row", "") for n in recompute_ops)
    acc = []
    if sig.query_static:
        acc.append("b_dqst = tl.zeros([BV, BK], dtype=tl.float32)")
    if sig.key_static:
        acc.append("b_dkst = tl.zeros([BV, BK], dtype=tl.float32)")
    acc.append(f"{'b_esum' if sig.decay_static else 'b_dA'} = tl.zeros([BV, BK], dtype=tl.float32)")
    fin = ["if USE_H0:", "    tl.store(state(dh0), dh, mask=m_vk)"]
    if sig.query_static:
        fin.append("tl.store(dqst_part + p_vk, b_dqst * scale, mask=m_vk)")
    if sig.key_static:
        fin.append("tl.store(dkst_part + p_vk, b_dkst, mask=m_vk)")
    if sig.decay_static:
        fin += [
            "tl.store(dgv_part + i_nh * V + o_v, tl.sum(b_esum * b_A, axis=1), mask=m_v)",
            "tl.store(dA_part + p_vk, b_gv[:, None] * b_esum, mask=m_vk)",
        ]
    else:
        fin.append("tl.store(dA_part + p_vk, b_dA, mask=m_vk)")
    body = f"""\
{PROLOGUE}
p_part = i_v.to(tl.int64) * NTOK * H * K  # this V-block's slice of the [NV, NTOK, H, K] partials
p_vk = p_nh + o_v[:, None] * K + o_k[None, :]  # [BV, BK] into the [N, H, V, K] partials
p_ck = i_nh.to(tl.int64) * NCMAX * V * K + o_v[:, None] * K + o_k[None, :]  # [BV, BK] into ckpt
o_s = tl.arange(0, BV)[:, None] * BK + o_k[None, :]  # [BV, BK] into one scratch slot
p_s = (i_nh.to(tl.int64) * tl.num_programs(0) + i_v) * CK * BV * BK + o_s
{static_loads(sig)}
{chr(10).join(acc)}

# ---- pass 1, forward time: S_t again, for dq and the chunk checkpoints ----
{state_in("h", "h0")}
{pipelined_loop(step_operands(sig, grad=True, drop=("q",)), _forward_grad_step(sig), depth=depth)}
tl.debug_barrier()  # checkpoints written above are read by other threads below

# ---- pass 2, reverse time, chunk by chunk: dh = dS_t, this V-block's rows ----
{state_in("dh", "dht")}
NC = tl.cdiv(L, CK)
for ci in range(0, NC):
    t0 = (NC - 1 - ci) * CK
    n_c = tl.minimum(L - t0, CK)
    h = tl.load(ckpt + p_ck + (t0 // CK) * K * V, mask=m_vk, other=0.0)
    # recompute the chunk's states S_{{t-1}} into scratch
    for j in range(0, n_c):
        row = (bos + t0 + j) * H + i_h
        tl.store(scratch + p_s + j * BV * BK, h)
{indent(cloads, 8)}
        h = h * {decay_factor(sig)}
        h += {input_term(sig)}
    tl.debug_barrier()
    for jj in range(0, n_c):
        j = n_c - 1 - jj
        row = (bos + t0 + j) * H + i_h
{indent(rloads, 8)}
{indent(_reverse_step(sig), 8)}
    tl.debug_barrier()  # the next chunk overwrites scratch
{chr(10).join(fin)}
"""
    flags = ["USE_H0", "IS_VARLEN", "CK"]
    ptrs = ", ".join(pointers)
    sig_text = f"""\
@triton.jit
def {name}(
    {ptrs},
    {state_strides(body)},
    scale, T, NTOK, NCMAX, H, K, V,
    BK: tl.constexpr, BV: tl.constexpr,
    {", ".join(f"{f}: tl.constexpr" for f in flags)},
):
"""
    src = HEADER.format(role="backward", describe=sig.describe())
    src += "\n\n" + sig_text + indent(expand_states(body), 4) + "\n"
    return name, src
