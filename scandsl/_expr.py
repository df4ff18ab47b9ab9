"""Expression nodes with named feature axes, and their evaluation in PyTorch.

A traced spec is a handful of these frozen nodes. Axes are named (``"K"``, ``"V"``,
``"M"``); tensors carry some leading dims (``[B, T, H]`` for whole sequences, ``[B, H]``
for one step) followed by one dim per axis, in the node's axis order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "Node",
    "Input",
    "Const",
    "Eye",
    "Op",
    "Outer",
    "Dot",
    "MatVec",
    "Softmax",
    "Read",
    "Placeholder",
    "UNARY",
    "BINARY",
    "evaluate",
    "walk",
    "replace",
]

Axes = tuple[str, ...]


class Node:
    """Base of all expression nodes (frozen dataclasses: structural equality and hashing)."""

    axes: Axes

    def children(self) -> tuple[Node, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class Input(Node):
    """A user input: per step (``[B,T,H,*axes]``) or a per-head parameter (``[H,*axes]``)."""

    name: str
    axes: Axes
    time: bool = True


@dataclass(frozen=True, slots=True)
class Const(Node):
    value: float
    axes: Axes = ()


@dataclass(frozen=True, slots=True)
class Eye(Node):
    """The identity matrix on one axis (axes ``(a, a)``), for transitions like ``I − β k kᵀ``."""

    axis: str

    @property
    def axes(self) -> Axes:  # type: ignore[override]
        return (self.axis, self.axis)


@dataclass(frozen=True, slots=True)
class Placeholder(Node):
    """Argument of a feature map under construction; replaced when the map is applied."""

    axes: Axes = ("_",)


@dataclass(frozen=True, slots=True)
class Op(Node):
    """Elementwise op; operands broadcast by axis name (one operand's axes contain the other's)."""

    fn: str
    args: tuple[Node, ...]
    axes: Axes
    param: float = 0.0  # exponent of "pow"

    def children(self) -> tuple[Node, ...]:
        return self.args


@dataclass(frozen=True, slots=True)
class Outer(Node):
    a: Node
    b: Node

    @property
    def axes(self) -> Axes:  # type: ignore[override]
        return self.a.axes + self.b.axes

    def children(self) -> tuple[Node, ...]:
        return (self.a, self.b)


@dataclass(frozen=True, slots=True)
class Dot(Node):
    """Contraction of two vectors over their common axis."""

    a: Node
    b: Node
    axes: Axes = ()

    def children(self) -> tuple[Node, ...]:
        return (self.a, self.b)


@dataclass(frozen=True, slots=True)
class MatVec(Node):
    """``m @ x``: contracts the last axis of matrix ``m`` with vector ``x``."""

    m: Node
    x: Node

    @property
    def axes(self) -> Axes:  # type: ignore[override]
        return self.m.axes[:1]

    def children(self) -> tuple[Node, ...]:
        return (self.m, self.x)


@dataclass(frozen=True, slots=True)
class Softmax(Node):
    x: Node

    @property
    def axes(self) -> Axes:  # type: ignore[override]
        return self.x.axes

    def children(self) -> tuple[Node, ...]:
        return (self.x,)


@dataclass(frozen=True, slots=True)
class Read(Node):
    """Read-out of a state: ``S q`` (``query`` a vector on the state's last axis), or the
    row-wise ``Σ_k S[:, k] C[:, k]`` when ``query`` is shaped like the state.
    ``version`` is ``"new"`` (``S_t``) or ``"prev"`` (``S_{t-1}``)."""

    state: str
    version: str
    query: Node
    axes: Axes

    def children(self) -> tuple[Node, ...]:
        return (self.query,)


def _elu1(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "neg": torch.neg,
    "exp": torch.exp,
    "log": torch.log,
    "abs": torch.abs,
    "sigmoid": torch.sigmoid,
    "logsigmoid": F.logsigmoid,
    "softplus": F.softplus,
    "relu": torch.relu,
    "elu1": _elu1,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sqrt": torch.sqrt,
}
BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
}


def walk(node: Node):
    """Every node reachable from ``node`` (depth first, each once)."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        yield n
        stack.extend(n.children())


def replace(node: Node, fn: Callable[[Node], Node | None]) -> Node:
    """Rebuild ``node`` bottom-up, substituting where ``fn`` returns a node."""
    hit = fn(node)
    if hit is not None:
        return hit
    if isinstance(node, Op):
        return Op(node.fn, tuple(replace(a, fn) for a in node.args), node.axes, node.param)
    if isinstance(node, Outer):
        return Outer(replace(node.a, fn), replace(node.b, fn))
    if isinstance(node, Dot):
        return Dot(replace(node.a, fn), replace(node.b, fn))
    if isinstance(node, MatVec):
        return MatVec(replace(node.m, fn), replace(node.x, fn))
    if isinstance(node, Softmax):
        return Softmax(replace(node.x, fn))
    if isinstance(node, Read):
        return Read(node.state, node.version, replace(node.query, fn), node.axes)
    return node


def align(t: torch.Tensor, axes: Axes, target: Axes) -> torch.Tensor:
    """View ``t`` (trailing ``axes``) as broadcastable to trailing ``target`` axes."""
    if axes == target:
        return t
    lead = t.dim() - len(axes)
    perm = list(range(lead)) + [lead + axes.index(a) for a in target if a in axes]
    t = t.permute(perm)
    for i, a in enumerate(target):
        if a not in axes:
            t = t.unsqueeze(lead + i)
    return t


def _hash_once(cls: type) -> type:
    """Cache the structural hash a frozen node dataclass generates: every op call looks nodes up
    in dicts (the leaf environment, memo tables), and the generated hash walks the subtree.

    The cache lives in the instance ``__dict__`` (``Node`` has no ``__slots__``), which the
    dataclass pickling of slotted classes leaves out: a node unpickled in another process, where
    strings hash differently, computes its own."""
    structural: Callable[[Node], int] = cls.__hash__  # type: ignore[assignment]

    def __hash__(self: Node) -> int:
        try:
            return self.__dict__["_hash"]
        except KeyError:
            h = self.__dict__["_hash"] = structural(self)
            return h

    cls.__hash__ = __hash__  # type: ignore[method-assign,assignment]
    return cls


for _cls in (Input, Const, Eye, Placeholder, Op, Outer, Dot, MatVec, Softmax, Read):
    _hash_once(_cls)


def evaluate(node: Node, env: Mapping[Node, torch.Tensor], sizes: Mapping[str, int]) -> torch.Tensor:
    """Value of ``node``; ``env`` maps leaves (Input, Read, Placeholder) to tensors."""
    cache: dict[Node, torch.Tensor] = {}

    def ev(n: Node) -> torch.Tensor:
        if n in env:
            return env[n]
        if n in cache:
            return cache[n]
        out = _eval_one(n, ev, env, sizes)
        cache[n] = out
        return out

    return ev(node)


def _any_leaf(env: Mapping[Node, torch.Tensor]) -> torch.Tensor:
    return next(iter(env.values()))


def _eval_one(n: Node, ev, env, sizes) -> torch.Tensor:
    if isinstance(n, Const):
        # filled on the device: torch.tensor(value, device=cuda) copies from pageable host memory,
        # which waits for the device's queue to drain (a host sync in every op call)
        return torch.full((), n.value, dtype=_any_leaf(env).dtype, device=_any_leaf(env).device)
    if isinstance(n, Eye):
        ref = _any_leaf(env)
        return torch.eye(sizes[n.axis], dtype=ref.dtype, device=ref.device)
    if isinstance(n, Op):
        if n.fn == "pow":
            return torch.pow(ev(n.args[0]), n.param)
        if n.fn in UNARY:
            return UNARY[n.fn](ev(n.args[0]))
        a, b = n.args
        ta, tb = ev(a), ev(b)
        return BINARY[n.fn](_bcast(ta, a.axes, n.axes), _bcast(tb, b.axes, n.axes))
    if isinstance(n, Outer):
        return ev(n.a).unsqueeze(-1) * ev(n.b).unsqueeze(-2)
    if isinstance(n, Dot):
        return (ev(n.a) * align(ev(n.b), n.b.axes, n.a.axes)).sum(-1)
    if isinstance(n, MatVec):
        if isinstance(n.m, Outer) and len(n.m.b.axes) == 1:
            # (a bᵀ) x = a (b · x): never the [..., A, B] outer product itself (rwkv6's bonus
            # read-out at B=4 T=4096 H=16 K=V=128 would be a 16 GiB tensor)
            return ev(n.m.a) * (ev(n.m.b) * ev(n.x)).sum(-1, keepdim=True)
        return (ev(n.m) * ev(n.x).unsqueeze(-2)).sum(-1)
    if isinstance(n, Softmax):
        return torch.softmax(ev(n.x), dim=-1)
    raise KeyError(f"no value bound for {n!r}")


def _bcast(t: torch.Tensor, axes: Axes, target: Axes) -> torch.Tensor:
    # constants are 0-d tensors: they broadcast as they are
    if t.dim() == 0:
        return t
    return align(t, axes, target)
