"""Triton source of the chunked delta-rule kernels (DeltaNet, Gated DeltaNet).

Math, per (sequence, head), with ``h = S^T`` (``[K, V]``), ``q~ = scale q``, ``v`` already
carrying ``beta`` (the prologue folds it in, or with ``VALUE_GATE`` the kernels multiply it by
its per-step factor ``vg`` as they load it: DeltaNet's ``β v``) and the recurrence
``h_t = e^{g_t} (I - beta_t k_t k_t^T) h_{t-1} + k_t v_t^T``. Write it as
``h_t = e^{g_t} h_{t-1} + k_t u_t^T`` with the *new value* ``u_t = v_t - beta_t e^{g_t} h_{t-1}^T k_t``.
Inside a chunk starting from ``h0``, with ``G`` the cumulative log-decay, ``gamma = e^G``,
``E[t, s] = e^{G_t - G_s}`` and ``tail_t = e^{G_C - G_t}``, substituting ``h_{t-1}`` gives a
unit-lower-triangular system for all ``u`` of the chunk at once (Yang et al., "Parallelizing
Linear Transformers with the Delta Rule over Sequence Length", 2024, the WY / UT form; the
scalar decay as in Gated DeltaNet, Yang, Kautz & Hatamizadeh 2024)::

    (I + A) u = v - diag(beta gamma) k h0,      A = strict_lower((beta k k^T) (.) E)
    T = (I + A)^{-1},   w = T diag(beta gamma) k,   u' = T v,   so   u = u' - w h0
    o = gamma (q~ h0) + ((q~ k^T) (.) E, s <= t) u
    h_end = gamma_C h0 + (tail k)^T u

Backward: ``du`` and ``dh`` (the gradient of each chunk-end state) come from a reverse walk,
``du = ((q~ k^T) (.) E)^T do + (tail k) dh_end`` and
``dh_start = gamma_C dh_end + (gamma q~)^T do - w^T du``. Then, per chunk in parallel,
``lambda = T^T du`` (the adjoint of the solve) is the gradient of ``v``, ``-lambda h0^T`` that of
``diag(beta gamma) k`` and ``-strict(lambda u^T)`` that of ``A``; everything else is the chain
rule through ``A``, ``w`` and the read-out (``delta_bwd_chunk``). For the decay, with
``dG_t`` the gradient of ``G_t``, the terms collapse to
``dG_t = q_t . dq_t - k_t . dk_t + 2 beta_t dbeta_t`` plus ``<h_end, dh_end>`` on the chunk's last
step, and ``dg`` is its reverse cumulative sum within the chunk.

Kernels (one generated module):

- ``delta_prepare``   program per (chunk, head): ``A`` in 16-step sub-blocks, ``T`` by forward
  substitution on the diagonal blocks and block substitution below them (unrolled here), then
  ``w`` and ``u'``; keeps ``T`` for the backward;
- ``delta_fwd_state`` program per (V-block, sequence, head): the sequential chunk walk;
- ``delta_fwd_out``   program per (chunk, V-block, head): the read-out;
- ``delta_bwd_state`` program per (V-block, sequence, head): the reverse walk;
- ``delta_bwd_chunk`` program per (chunk, head): all input gradients of the chunk.
"""

from __future__ import annotations

import torch
from scandsl.lowering.chunk_delta_slots import (
    block_beta_gamma,
    block_gates,
    block_pair_decay,
    fill,
    slots,
)
from scandsl.lowering.chunk_delta_templates import BWD_CHUNK, BWD_STATE, FWD_OUT, FWD_STATE, HEADER

from scandsl._core import CoreSig

__all__ = ["generate_source", "SUB"]

SUB = 16  # rows of one sub-block of the triangular solve (the smallest tl.dot tile)

_DOT_BODY = {
    torch.float32: 'tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="@precision@")',
    torch.bfloat16: "tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))",
    torch.float16: "tl.dot(a.to(tl.float16), b.to(tl.float16))",
}


def generate_source(sig: CoreSig, config: dict, *, dtype: torch.dtype = torch.bfloat16) -> str:
    """The kernels of one signature, chunk size and operand dtype, as Python source text.

    ``config["chunk"]`` (a multiple of 16) and ``config.get("fp32_precision", "tf32x3")`` (the
    tensor-core precision of fp32 operands) shape the text; tile sizes are launch constants.
    """
    chunk = int(config["chunk"])
    if chunk % SUB or chunk < SUB:
        raise ValueError(f"chunk_delta config 'chunk': a multiple of {SUB}, got {chunk}")
    if dtype not in _DOT_BODY:
        raise ValueError(f"chunk_delta: operand dtype float32, bfloat16 or float16, got {dtype}")
    precision = str(config.get("fp32_precision", "tf32x3"))
    values = dict(slots(sig))
    header = HEADER.replace("@dot_body@", _DOT_BODY[dtype])
    values |= {
        "describe": sig.describe(),
        "chunk": str(chunk),
        "dtype": str(dtype).removeprefix("torch."),
        "precision": precision,
    }
    wu = str(config.get("prepare_wu", "blocks"))
    if wu not in ("blocks", "full", "split"):
        raise ValueError(f"chunk_delta config 'prepare_wu': 'blocks', 'full' or 'split', got {wu!r}")
    parts = [header, _prepare(sig, chunk // SUB, wu), FWD_STATE, FWD_OUT, BWD_STATE, BWD_CHUNK]
    if wu == "split":
        parts.insert(2, _wu_kernel(sig))
    return fill("".join(parts), values)


def _prepare(sig: CoreSig, nb: int, wu: str = "blocks") -> str:
    """``delta_prepare`` for ``nb`` sub-blocks, unrolled: register tiles cannot be sliced, so each
    16x16 block of ``A`` and ``T`` is its own variable (``b_A{i}{j}``, ``b_T{i}{j}``, ``i >= j``)."""
    body: list[str] = []
    add = body.append
    for j in range(nb):
        add(f"# sub-block {j}: steps {SUB * j}..{SUB * j + SUB - 1} of the chunk")
        add(f"r{j} = t0 + {SUB * j} + o_s  # [16] rows" if j else "r0 = t0 + o_s  # [16] rows")
        add(f"m{j} = r{j} < eos")
        add(
            f"b_k{j} = tl.load(k + (r{j}[:, None] * H + i_h) * K + o_k[None, :], "
            f"mask=m{j}[:, None] & m_k[None, :], other=0.0)  # [16, BK]"
        )
        add(f"b_b{j} = tl.load(beta + r{j} * H + i_h, mask=m{j}, other=0.0).to(tl.float32)  # [16]")
        body.extend(block_gates(sig, j))
    add("# A = strict_lower((beta k k^T) (.) E), block (i, j) for i >= j")
    for i in range(nb):
        for j in range(i + 1):
            add(
                f"b_A{i}{j} = _dot(b_k{i}, tl.trans(b_k{j})) * b_b{i}[:, None]"
                f"{block_pair_decay(sig, i, j)}  # [16, 16]"
            )
        add(f"b_A{i}{i} = tl.where(strict, b_A{i}{i}, 0.0)")
    add("# diagonal blocks (I + A_ii)^-1 = I + Y_ii by forward substitution, row r from rows < r:")
    add("# y_r = n_r + n_r Y with N = -A_ii; all diagonal blocks advance in the same sweep")
    for i in range(nb):
        add(f"b_T{i}{i} = -b_A{i}{i}")
    add(f"for i_r in range(1, {SUB}):")
    add("    sel = o_s[:, None] == i_r")
    for i in range(nb):
        add(f"    a{i} = tl.sum(tl.where(sel, b_T{i}{i}, 0.0), axis=0)  # [16] row r of -A_ii")
        add(f"    a{i} = a{i} + tl.sum(a{i}[:, None] * b_T{i}{i}, axis=0)")
        add(f"    b_T{i}{i} = tl.where(sel, a{i}[None, :], b_T{i}{i})")
    for i in range(nb):
        add(f"b_T{i}{i} = b_T{i}{i} + eye")
    if nb > 1:
        add("# blocks below the diagonal, nearest first: T_ij = -T_ii sum_{m=j}^{i-1} A_im T_mj")
    for d in range(1, nb):
        for j in range(nb - d):
            i = j + d
            terms = " + ".join(f"_dot32(b_A{i}{m}, b_T{m}{j})" for m in range(j, i))
            add(f"b_T{i}{j} = -_dot32(b_T{i}{i}, {terms})")
    if wu == "full":
        body.extend(_wu_full(sig, nb))
    elif wu == "split":
        body.extend(_store_t(nb))
    else:
        body.extend(_wu_blocks(sig, nb))
    head = '''

@triton.jit
def delta_prepare(
    k, v, vg, beta, g, w, u, tmat, cu_seqlens, chunk_seq, chunk_start, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, STORE_T: tl.constexpr, VALUE_GATE: tl.constexpr,
):
    """UT transform of one (chunk, head): T = (I + A)^-1, w = T diag(beta gamma) k, u' = T v."""
    i_c = tl.program_id(0)
    i_h = tl.program_id(1)
    t0, eos = _chunk_rows(i_c, cu_seqlens, chunk_seq, chunk_start, T, NT, C, IS_VARLEN)
    o_s = tl.arange(0, 16)  # steps of one sub-block
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    strict = o_s[:, None] > o_s[None, :]  # [16, 16] step t (row) strictly after step s (column)
    eye = tl.where(o_s[:, None] == o_s[None, :], 1.0, 0.0)  # [16, 16]
'''
    return head + "\n".join("    " + line for line in body) + "\n"


def _wu_blocks(sig: CoreSig, nb: int) -> list[str]:
    """w and u' from the 16x16 blocks of T held in registers: sums of [16, 16] x [16, *] products."""
    body: list[str] = []
    add = body.append
    add("# w = T diag(beta gamma) k")
    for j in range(nb):
        add(f"b_kb{j} = b_k{j} * ({block_beta_gamma(sig, j)})[:, None]  # [16, BK]")
    for i in range(nb):
        terms = " + ".join(f"_dot(b_T{i}{j}, b_kb{j})" for j in range(i + 1))
        add(f"b_w{i} = {terms}")
        add(
            f"tl.store(w + (r{i}[:, None] * H + i_h) * K + o_k[None, :], b_w{i}.to(w.dtype.element_ty), "
            f"mask=m{i}[:, None] & m_k[None, :])"
        )
    add("if STORE_T:  # T for the backward, [C] per step (zeros above the diagonal), in the input dtype")
    for i in range(nb):
        for j in range(nb):
            block = f"b_T{i}{j}" if j <= i else "tl.zeros([16, 16], dtype=tl.float32)"
            add(
                f"    tl.store(tmat + (r{i}[:, None] * H + i_h) * C + {f'{SUB * j} + ' if j else ''}o_s[None, :], "
                f"{block}.to(tmat.dtype.element_ty), mask=m{i}[:, None])"
            )
    add("# u' = T v, one V-block at a time")
    add("for i_v in range(0, tl.cdiv(V, BV)):")
    add("    o_v = i_v * BV + tl.arange(0, BV)")
    add("    m_v = o_v < V")
    for j in range(nb):
        add(
            f"    b_v{j} = tl.load(v + (r{j}[:, None] * H + i_h) * V + o_v[None, :], "
            f"mask=m{j}[:, None] & m_v[None, :], other=0.0)  # [16, BV]"
        )
        add("    if VALUE_GATE:  # the value is v ⊙ vg, vg one number a step")
        add(f"        b_v{j} = b_v{j} * tl.load(vg + r{j} * H + i_h, mask=m{j}, other=0.0).to(tl.float32)[:, None]")
    for i in range(nb):
        terms = " + ".join(f"_dot(b_T{i}{j}, b_v{j})" for j in range(i + 1))
        add(f"    b_u{i} = {terms}")
        add(
            f"    tl.store(u + (r{i}[:, None] * H + i_h) * V + o_v[None, :], b_u{i}.to(u.dtype.element_ty), "
            f"mask=m{i}[:, None] & m_v[None, :])"
        )
    return body


def _wu_full(sig: CoreSig, nb: int) -> list[str]:
    """w and u' as [C, C] x [C, *] products: T goes out through ``tmat`` (kept for the backward
    anyway) and comes back as one [C, C] tile after a block barrier, so each product is one
    wgmma-sized dot instead of ``nb (nb + 1) / 2`` [16, 16] ones. Same rounding as the blocks:
    T is cast to the operand dtype either way."""
    body = _store_t(nb)
    body.append("tl.debug_barrier()  # every thread's T stores are visible to the loads below")
    return body + _wu_products(sig)


def _store_t(nb: int) -> list[str]:
    body = ["# T out to tmat ([C] per step, zeros above the diagonal)"]
    for i in range(nb):
        for j in range(nb):
            block = f"b_T{i}{j}" if j <= i else "tl.zeros([16, 16], dtype=tl.float32)"
            body.append(
                f"tl.store(tmat + (r{i}[:, None] * H + i_h) * C + {f'{SUB * j} + ' if j else ''}o_s[None, :], "
                f"{block}.to(tmat.dtype.element_ty), mask=m{i}[:, None])"
            )
    return body


def _wu_products(sig: CoreSig) -> list[str]:
    """w = T diag(beta gamma) k and u' = T v from T read back from ``tmat`` as one [C, C] tile."""
    s = slots(sig)
    body: list[str] = []
    add = body.append
    add("o_c = tl.arange(0, C)")
    add("r = t0 + o_c  # [C] rows of this chunk")
    add("m_t = r < eos")
    add(
        "b_T = tl.load(tmat + (r[:, None] * H + i_h) * C + o_c[None, :], mask=m_t[:, None], other=0.0)  # [C, C]"
    )
    add("b_b = tl.load(beta + r * H + i_h, mask=m_t, other=0.0).to(tl.float32)  # [C]")
    for key in ("gates", "gamma"):
        body.extend(line for line in s[key].splitlines() if line)
    add("# w = T diag(beta gamma) k")
    add(
        "b_kc = tl.load(k + (r[:, None] * H + i_h) * K + o_k[None, :], "
        "mask=m_t[:, None] & m_k[None, :], other=0.0)  # [C, BK]"
    )
    add(f"b_w = _dot(b_T, b_kc * {s['beta_gamma']}[:, None])  # [C, BK]")
    add(
        "tl.store(w + (r[:, None] * H + i_h) * K + o_k[None, :], b_w.to(w.dtype.element_ty), "
        "mask=m_t[:, None] & m_k[None, :])"
    )
    add("# u' = T v, one V-block at a time")
    add("for i_v in range(0, tl.cdiv(V, BV)):")
    add("    o_v = i_v * BV + tl.arange(0, BV)")
    add("    m_tv = m_t[:, None] & (o_v < V)[None, :]")
    add("    b_v = tl.load(v + (r[:, None] * H + i_h) * V + o_v[None, :], mask=m_tv, other=0.0)  # [C, BV]")
    add("    if VALUE_GATE:  # the value is v ⊙ vg, vg one number a step")
    add("        b_v = b_v * tl.load(vg + r * H + i_h, mask=m_t, other=0.0).to(tl.float32)[:, None]")
    add(
        "    tl.store(u + (r[:, None] * H + i_h) * V + o_v[None, :], _dot(b_T, b_v).to(u.dtype.element_ty), "
        "mask=m_tv)"
    )
    return body


def _wu_kernel(sig: CoreSig) -> str:
    """``delta_wu`` (prepare_wu="split"): the products of :func:`_wu_products` as their own kernel,
    so the solve and the products each run at their own warp count."""
    head = '''

@triton.jit
def delta_wu(
    k, v, vg, beta, g, w, u, tmat, cu_seqlens, chunk_seq, chunk_start, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IS_VARLEN: tl.constexpr, VALUE_GATE: tl.constexpr,
):
    """w = T diag(beta gamma) k and u' = T v of one (chunk, head), T from delta_prepare."""
    i_c = tl.program_id(0)
    i_h = tl.program_id(1)
    t0, eos = _chunk_rows(i_c, cu_seqlens, chunk_seq, chunk_start, T, NT, C, IS_VARLEN)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
'''
    return head + "\n".join("    " + line for line in _wu_products(sig)) + "\n"
