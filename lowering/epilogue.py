"""Fused epilogue: a spec's output expression around its core read-outs, one kernel (forward).

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
matrix) makes :func:`plan` return ``None`` and the op keeps the PyTorch path. This module is the
forward; when gradients are needed the entry runs it inside an autograd function whose backward
is generated from the same tree (``lowering/epilogue_bwd.py``).

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

__all__ = ["plan", "skip_term", "bind", "run", "generate_source", "POISON"]

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

# rows (steps) a program, forward and backward: 16 and 64 timed within 5 % of it on the H100
# (bench/results/gpu-ab-epilogue-bwd.json)
BR = 32
_MAX_FEATURE = 256

# Tests set POISON["enabled"] to NaN-fill every buffer the kernels are supposed to overwrite.
POISON = {"enabled": False}


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if POISON["enabled"] and dtype.is_floating_point:
        out.fill_(float("nan"))
    return out


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


def skip_term(output: Node, read: Read) -> tuple[Node, Input] | None:
    """``(D, x)`` when ``output`` is ``read + D ⊙ x`` (either order of either operation): ``D`` a
    time-invariant node on the read's one axis (a per-(head, channel) parameter), ``x`` a
    per-step input on it. Mamba's and S4's ``S q + D ⊙ x``: a core strategy that takes a skip
    term (``takes_skip``, scandsl._core) adds it in its read-out, and no epilogue runs."""
    if not (isinstance(output, Op) and output.fn == "add" and len(read.axes) == 1):
        return None
    a, b = output.args
    if b == read:
        a, b = b, a
    if a != read or not (isinstance(b, Op) and b.fn == "mul"):
        return None
    d, x = b.args
    if isinstance(d, Input) and d.time:
        d, x = x, d
    per_step = any(isinstance(n, Read) or (isinstance(n, Input) and n.time) for n in walk(d))
    if isinstance(x, Input) and x.time and x.axes == read.axes == d.axes and not per_step:
        return d, x
    return None


def leaf_args(leaves: tuple[_Leaf, ...]) -> list[str]:
    """Kernel parameters of the leaves: ``p{i}`` and its strides (``[B,T,H,*]`` or ``[H,*]``)."""
    args: list[str] = []
    for i, lf in enumerate(leaves):
        a = f"p{i}"
        args += [a, f"{a}_sb", f"{a}_st", f"{a}_sh", f"{a}_sd"] if lf.per_step else [a, f"{a}_sh", f"{a}_sd"]
    return args


def leaf_load(i: int, lf: _Leaf, scaled: bool) -> str:
    """The line loading leaf ``i`` as ``x{i}`` in fp32: ``[BR, B{axis}]`` per step with an axis,
    ``[BR, 1]`` per step without, ``[1, B{axis}]`` per head with an axis, a scalar without."""
    a = f"p{i}"
    if lf.per_step:
        rows = f"b[:, None] * {a}_sb + t[:, None] * {a}_st + i_h * {a}_sh"
        if lf.axis is None:
            ptr, mask, shape = f"{a} + b * {a}_sb + t * {a}_st + i_h * {a}_sh", "m_r", "[:, None]"
        else:
            ptr = f"{a} + {rows} + o_{lf.axis}[None, :] * {a}_sd"
            mask, shape = f"m_r[:, None] & m_{lf.axis}[None, :]", ""
    elif lf.axis is None:
        ptr, mask, shape = f"{a} + i_h * {a}_sh", None, ""
    else:
        ptr, mask, shape = f"{a} + i_h * {a}_sh + o_{lf.axis} * {a}_sd", f"m_{lf.axis}", "[None, :]"
    load = f"tl.load({ptr}" + (f", mask={mask}, other=0.0)" if mask else ")")
    factor = " * scale" if scaled else ""
    what = f"{type(lf.node).__name__} {getattr(lf.node, 'name', None) or lf.node.state}"
    return f"x{i} = {load}.to(tl.float32){shape}{factor}  # {what}"


def forward_expr(n: Node, emit) -> str:
    """The Triton expression of one non-leaf node, its operands' names from ``emit``. Sums over a
    feature axis mask its padded lanes (an operand there need not be 0: ``exp`` of a padded 0)."""
    if isinstance(n, Op):
        return (_UNARY if len(n.args) == 1 else _BINARY)[n.fn].format(*(emit(a) for a in n.args))
    if isinstance(n, Dot):
        return f"tl.sum(tl.where(m_{n.a.axes[0]}[None, :], {emit(n.a)} * {emit(n.b)}, 0.0), axis=1)[:, None]"
    # MatVec of an Outer: (a bᵀ) x = a (b · x)
    assert isinstance(n, MatVec) and isinstance(n.m, Outer)
    b = n.m.b
    dot = f"tl.sum(tl.where(m_{b.axes[0]}[None, :], {emit(b)} * {emit(n.x)}, 0.0), axis=1)[:, None]"
    return f"{emit(n.m.a)} * {dot}"


def axes_of(output: Node, leaves: tuple[_Leaf, ...]) -> list[str]:
    return sorted({lf.axis for lf in leaves if lf.axis is not None} | {output.axes[0]})


def prelude(axes: list[str]) -> str:
    """The kernel's first lines: its rows ``r`` (``b``, ``t``) and each feature axis's lanes."""
    lanes = "".join(f"\n    o_{ax} = tl.arange(0, B{ax})\n    m_{ax} = o_{ax} < N{ax}" for ax in axes)
    return (
        "i_r, i_h = tl.program_id(0), tl.program_id(1)\n"
        "    r = i_r.to(tl.int64) * BR + tl.arange(0, BR)\n"
        "    m_r = r < R\n"
        "    b, t = r // T, r % T" + lanes
    )


def generate_source(output: Node, leaves: tuple[_Leaf, ...], scaled: frozenset = frozenset()) -> str:
    """Triton source of the epilogue kernel for ``output``; the leaves in ``scaled`` are multiplied
    by the kernel's ``scale`` argument (the op's query scale, folded into the load)."""
    axes = axes_of(output, leaves)
    body = [leaf_load(i, lf, lf.node in scaled) for i, lf in enumerate(leaves)]
    names = {lf.node: f"x{i}" for i, lf in enumerate(leaves)}

    def emit(n: Node) -> str:
        if n in names:
            return names[n]
        if isinstance(n, Const):
            return repr(float(n.value))
        expr = forward_expr(n, emit)
        names[n] = f"e{len(names) - len(leaves)}"
        body.append(f"{names[n]} = {expr}")
        return names[n]

    result = emit(output)
    w = output.axes[0]
    sizes = [f"N{ax}: tl.constexpr, B{ax}: tl.constexpr" for ax in axes]
    lines = "\n    ".join(body)
    return f'''"""Generated by scandsl.lowering.epilogue for: {output!r}"""
import triton
import triton.language as tl


@triton.jit
def epilogue_kernel(out, {", ".join(leaf_args(leaves))}, scale, R, T, H: tl.constexpr, {", ".join(sizes)}, BR: tl.constexpr):
    """out[r, h, :] = the op's output expression on rows r of the flattened B*T axis, head h."""
    {prelude(axes)}
    {lines}
    e_out = tl.broadcast_to({result}, [BR, B{w}])
    tl.store(out + (r[:, None] * H + i_h) * N{w} + o_{w}[None, :], e_out.to(out.dtype.element_ty),
             mask=m_r[:, None] & m_{w}[None, :])
'''


def module_name(prefix: str, output: Node, extra: object = None) -> str:
    """A readable module name per expression (what SCANDSL_DUMP writes): its read-out states and
    ops, and a hash of the expression (and ``extra``) — mamba's and s4's differ in the read's query."""
    parts = sorted({n.state for n in walk(output) if isinstance(n, Read)}) + sorted(
        {n.fn for n in walk(output) if isinstance(n, Op)}
    )
    key = repr(output) if extra is None else repr((output, extra))
    return prefix + "_" + "_".join(parts) + "_" + hashlib.sha256(key.encode()).hexdigest()[:6]


@functools.lru_cache(maxsize=256)
def _kernel(output: Node, scaled_leaves: frozenset):
    leaves = plan(output)
    assert leaves is not None
    src = generate_source(output, leaves, scaled_leaves)
    return load_source(src, name=module_name("epilogue", output)).epilogue_kernel


def fusable(output: Node, values: dict[Node, torch.Tensor], scaled: dict[Node, float], sizes) -> bool:
    """Whether the generated kernels take ``output`` with these leaf values: a plan, one scale,
    features within the tiles, a per-step leaf to give ``[B, T, H]``, and no float64 leaf (the
    kernels compute in fp32; float64 is the checking dtype, which PyTorch keeps exact)."""
    leaves = plan(output)
    if leaves is None or len(set(scaled.values())) > 1:
        return False
    if any(sizes[lf.axis] > _MAX_FEATURE for lf in leaves if lf.axis) or sizes[output.axes[0]] > _MAX_FEATURE:
        return False
    if not all(lf.node in values for lf in leaves) or any(
        values[lf.node].dtype == torch.float64 for lf in leaves
    ):
        return False
    return any(lf.per_step for lf in leaves)


def launch_args(leaves: tuple[_Leaf, ...], tensors: list[torch.Tensor]) -> list:
    """The leaves' pointers and strides, in :func:`leaf_args`' order."""
    args: list = []
    for t, lf in zip(tensors, leaves):
        # per-head parameters arrive as [H, *] or with two broadcast dims in front
        sh, sd = (t.stride(-2), t.stride(-1)) if lf.axis else (t.stride(-1), 0)
        args += [t, t.stride(0), t.stride(1), sh, sd] if lf.per_step else [t, sh, sd]
    return args


def launch_meta(output: Node, leaves: tuple[_Leaf, ...], sizes) -> dict[str, int]:
    axes = axes_of(output, leaves)
    return {f"N{ax}": sizes[ax] for ax in axes} | {f"B{ax}": pow2(sizes[ax]) for ax in axes}


def lead(leaves: tuple[_Leaf, ...], tensors: list[torch.Tensor]) -> tuple[int, int, int]:
    """``(B, T, H)`` from the first per-step leaf."""
    ref = next(t for t, lf in zip(tensors, leaves) if lf.per_step)
    B, T, H = ref.shape[:3]
    return B, T, H


def forward(
    output: Node, tensors: list[torch.Tensor], scaled: frozenset, scale: float, sizes, out_dtype
) -> torch.Tensor:
    """The fused kernel on the leaf values ``tensors`` (in :func:`plan`'s order)."""
    leaves = plan(output)
    assert leaves is not None
    B, T, H = lead(leaves, tensors)
    out = empty((B, T, H, sizes[output.axes[0]]), out_dtype, tensors[0].device)
    kernel = _kernel(output, scaled)
    meta = launch_meta(output, leaves, sizes)
    kernel[(cdiv(B * T, BR), H)](out, *launch_args(leaves, tensors), scale, B * T, T, H=H, BR=BR, **meta)
    return out


def bind(
    output: Node, values: dict[Node, torch.Tensor], scaled: dict[Node, float], sizes
) -> tuple[list[torch.Tensor], float] | None:
    """The leaf values in :func:`plan`'s order and the one scale of the scaled leaves, or ``None``
    when the kernels do not take ``output`` with these values (:func:`fusable`)."""
    if not fusable(output, values, scaled, sizes):
        return None
    leaves = plan(output)
    assert leaves is not None
    return [values[lf.node] for lf in leaves], next(iter(scaled.values()), 1.0)


def run(
    output: Node, values: dict[Node, torch.Tensor], scaled: dict[Node, float], sizes, out_dtype
) -> torch.Tensor | None:
    """``output`` evaluated by one generated kernel, ``[B, T, H, V]`` in ``out_dtype``; ``None``
    when it is not fusable here. ``values`` binds every leaf; ``scaled`` maps leaves that enter
    multiplied by a scale (the op's raw query) to that scale."""
    bound = bind(output, values, scaled, sizes)
    if bound is None:
        return None
    tensors, scale = bound
    return forward(output, tensors, frozenset(scaled), scale, sizes, out_dtype)
