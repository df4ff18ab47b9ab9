"""Fused forward epilogue: a spec's output expression around its core read-outs, one kernel.

After the core recurrences, an op's output is the spec's output expression over their
read-outs and the inputs: ``o_t + D ⊙ x_t`` (mamba, s4), ``o_t / max(1, |z_t|)`` (mlstm),
``o_t / z_t`` (gated_rfa), ``o_t + (q_t · (u ⊙ k_t)) v_t`` (rwkv6's bonus). Evaluated by
PyTorch these are several kernels, each a full pass over ``[B, T, H, V]``, and mixed precision
promotes the intermediates to fp32 (mamba's ``D ⊙ x`` is fp32 because ``D`` is): at the
Mamba-1 shape 0.35 ms of the op's forward, more than the scan kernel itself.

This module generates one Triton kernel per output expression instead: every leaf loaded once
(per-step ``[B,T,H,*]``, per-head ``[H,*]``, any strides), the expression in fp32, one store in
the output dtype. Elementwise ops, dot products over one axis (``Dot``) and the rank-one
``(a bᵀ) x = a (b · x)`` (``MatVec`` of an ``Outer``) are fused; any other node (a softmax, a
matrix) makes :func:`plan` return ``None`` and the op keeps the PyTorch path. Forward only: the
entry uses it when nothing needs a gradient (inference; the benchmark's forward), and PyTorch's
autograd otherwise.

One program per (``BR`` rows of the flattened ``B*T`` axis, head): rows on the tile's first
dimension, the leaf's feature axis (padded to a power of two) on its second.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import torch
from scandsl.lowering._source import load_source
from scandsl.lowering._tiles import cdiv, pow2

from scandsl._expr import BINARY, Const, Dot, Input, MatVec, Node, Op, Outer, Read, walk

__all__ = ["plan", "run", "generate_source"]

_UNARY = {
    "neg": "-{0}",
    "exp": "tl.exp({0})",
    "log": "tl.log({0})",
    "abs": "tl.abs({0})",
    "sigmoid": "tl.sigmoid({0})",
    "relu": "tl.maximum({0}, 0.0)",
    "silu": "{0} * tl.sigmoid({0})",
    "sqrt": "tl.sqrt({0})",
}
_BINARY = {
    "add": "{0} + {1}",
    "sub": "{0} - {1}",
    "mul": "{0} * {1}",
    "div": "{0} / {1}",
    "maximum": "tl.maximum({0}, {1})",
    "minimum": "tl.minimum({0}, {1})",
}
assert set(_BINARY) == set(BINARY), "every binary op of the expression language has a fused form"

_BR = 32  # rows (steps) a program
_MAX_FEATURE = 256


@dataclass(frozen=True)
class _Leaf:
    node: Node  # an Input or a Read
    per_step: bool
    axis: str | None  # its one feature axis, or None for a scalar per step / per head


def _leaves(node: Node, out: dict[Node, _Leaf]) -> bool:
    """Collect the leaves of a fusable tree; False at the first node this kernel cannot take."""
    if isinstance(node, Const):
        return not node.axes
    if isinstance(node, (Input, Read)):
        if len(node.axes) > 1:
            return False
        per_step = node.time if isinstance(node, Input) else True
        out.setdefault(node, _Leaf(node, per_step, node.axes[0] if node.axes else None))
        return True
    if isinstance(node, Op):
        # pow (and the other unary ops without a line below) keeps the PyTorch path
        ok = node.fn in (_UNARY if len(node.args) == 1 else _BINARY)
        return ok and all(_leaves(a, out) for a in node.args)
    if isinstance(node, Dot):
        return (
            len(node.a.axes) == 1
            and node.a.axes == node.b.axes
            and _leaves(node.a, out)
            and _leaves(node.b, out)
        )
    if isinstance(node, MatVec):
        m = node.m
        return (
            isinstance(m, Outer)
            and len(m.a.axes) == 1
            and len(m.b.axes) == 1
            and m.b.axes == node.x.axes
            and all(_leaves(n, out) for n in (m.a, m.b, node.x))
        )
    return False


@functools.lru_cache(maxsize=256)
def plan(output: Node) -> tuple[_Leaf, ...] | None:
    """The leaves of ``output`` in kernel-argument order, or ``None`` when it is not fusable
    (or is a bare read-out, which needs no epilogue)."""
    if isinstance(output, Read) or len(output.axes) != 1:
        return None
    found: dict[Node, _Leaf] = {}
    if not _leaves(output, found):
        return None
    return tuple(found.values())


def generate_source(output: Node, leaves: tuple[_Leaf, ...], scaled: frozenset = frozenset()) -> str:
    """Triton source of the epilogue kernel for ``output``; the leaves in ``scaled`` are multiplied
    by the kernel's ``scale`` argument (the op's query scale, folded into the load)."""
    axes = sorted({lf.axis for lf in leaves if lf.axis is not None} | {output.axes[0]})
    args, body = ["out"], []
    for i, lf in enumerate(leaves):
        a = f"p{i}"  # the pointer; x{i} its loaded tile
        if lf.per_step:
            args += [a, f"{a}_sb", f"{a}_st", f"{a}_sh", f"{a}_sd"]
            rows = f"b[:, None] * {a}_sb + t[:, None] * {a}_st + i_h * {a}_sh"
            if lf.axis is None:
                ptr, mask, shape = f"{a} + b * {a}_sb + t * {a}_st + i_h * {a}_sh", "m_r", "[:, None]"
            else:
                ptr = f"{a} + {rows} + o_{lf.axis}[None, :] * {a}_sd"
                mask, shape = f"m_r[:, None] & m_{lf.axis}[None, :]", ""
        else:
            args += [a, f"{a}_sh", f"{a}_sd"]
            if lf.axis is None:
                ptr, mask, shape = f"{a} + i_h * {a}_sh", None, ""
            else:
                ptr, mask, shape = f"{a} + i_h * {a}_sh + o_{lf.axis} * {a}_sd", f"m_{lf.axis}", "[None, :]"
        load = f"tl.load({ptr}" + (f", mask={mask}, other=0.0)" if mask else ")")
        factor = " * scale" if lf.node in scaled else ""
        what = f"{type(lf.node).__name__} {getattr(lf.node, 'name', None) or lf.node.state}"
        body.append(f"x{i} = {load}.to(tl.float32){shape}{factor}  # {what}")
    names = {lf.node: f"x{i}" for i, lf in enumerate(leaves)}

    def emit(n: Node) -> str:
        if n in names:
            return names[n]
        if isinstance(n, Const):
            return repr(float(n.value))
        if isinstance(n, Op):
            expr = (_UNARY if len(n.args) == 1 else _BINARY)[n.fn].format(*(emit(a) for a in n.args))
        elif isinstance(n, Dot):
            expr = f"tl.sum({emit(n.a)} * {emit(n.b)}, axis=1)[:, None]"
        else:  # MatVec of an Outer: (a bᵀ) x = a (b · x)
            assert isinstance(n, MatVec) and isinstance(n.m, Outer)
            expr = f"{emit(n.m.a)} * tl.sum({emit(n.m.b)} * {emit(n.x)}, axis=1)[:, None]"
        names[n] = f"e{len(names) - len(leaves)}"
        body.append(f"{names[n]} = {expr}")
        return names[n]

    result = emit(output)
    w = output.axes[0]
    sizes = [f"N{ax}: tl.constexpr, B{ax}: tl.constexpr" for ax in axes]
    lanes = [f"o_{ax} = tl.arange(0, B{ax})\n    m_{ax} = o_{ax} < N{ax}" for ax in axes]
    lines, lanes_src = "\n    ".join(body), "\n    ".join(lanes)
    return f'''"""Generated by scandsl.lowering.epilogue for: {output!r}"""
import triton
import triton.language as tl


@triton.jit
def epilogue_kernel({", ".join(args)}, scale, R, T, H: tl.constexpr, {", ".join(sizes)}, BR: tl.constexpr):
    """out[r, h, :] = the op's output expression on rows r of the flattened B*T axis, head h."""
    i_r, i_h = tl.program_id(0), tl.program_id(1)
    r = i_r.to(tl.int64) * BR + tl.arange(0, BR)
    m_r = r < R
    b, t = r // T, r % T
    {lanes_src}
    {lines}
    e_out = tl.broadcast_to({result}, [BR, B{w}])
    tl.store(out + (r[:, None] * H + i_h) * N{w} + o_{w}[None, :], e_out.to(out.dtype.element_ty),
             mask=m_r[:, None] & m_{w}[None, :])
'''


@functools.lru_cache(maxsize=256)
def _kernel(output: Node, scaled_leaves: frozenset):
    leaves = plan(output)
    assert leaves is not None
    src = generate_source(output, leaves, scaled_leaves)
    # a readable stem per expression (what SCANDSL_DUMP writes): its read-out states and ops
    parts = sorted({n.state for n in walk(output) if isinstance(n, Read)}) + sorted(
        {n.fn for n in walk(output) if isinstance(n, Op)}
    )
    tag = hashlib.sha256(repr(output).encode()).hexdigest()[:6]  # mamba's and s4's differ in the read's query
    return load_source(src, name="epilogue_" + "_".join(parts) + "_" + tag).epilogue_kernel


def run(
    output: Node, values: dict[Node, torch.Tensor], scaled: dict[Node, float], sizes, out_dtype
) -> torch.Tensor | None:
    """``output`` evaluated by one generated kernel, ``[B, T, H, V]`` in ``out_dtype``; ``None``
    when it is not fusable here. ``values`` binds every leaf; ``scaled`` maps leaves that enter
    multiplied by a scale (the op's raw query) to that scale."""
    leaves = plan(output)
    if leaves is None or len({s for s in scaled.values()}) > 1:
        return None
    if any(sizes[lf.axis] > _MAX_FEATURE for lf in leaves if lf.axis) or sizes[output.axes[0]] > _MAX_FEATURE:
        return None
    tensors = [values[lf.node] for lf in leaves]
    ref = next((t for t, lf in zip(tensors, leaves) if lf.per_step), None)
    if ref is None:  # no per-step leaf gives [B, T, H]
        return None
    B, T, H = ref.shape[:3]
    args: list = []
    for t, lf in zip(tensors, leaves):
        # per-head parameters arrive as [H, *] or with two broadcast dims in front
        sh, sd = (t.stride(-2), t.stride(-1)) if lf.axis else (t.stride(-1), 0)
        args += [t, t.stride(0), t.stride(1), sh, sd] if lf.per_step else [t, sh, sd]
    w = output.axes[0]
    out = torch.empty(B, T, H, sizes[w], dtype=out_dtype, device=ref.device)
    axes = sorted({lf.axis for lf in leaves if lf.axis is not None} | {w})
    meta = {f"N{ax}": sizes[ax] for ax in axes} | {f"B{ax}": pow2(sizes[ax]) for ax in axes}
    kernel = _kernel(output, frozenset(scaled))
    scale = next(iter(scaled.values()), 1.0)
    kernel[(cdiv(B * T, _BR), H)](out, *args, scale, B * T, T, H=H, BR=_BR, **meta)
    return out
