"""The DSL a user writes recurrences in, and the tracer that turns them into a Spec.

A spec is a plain Python function over symbolic stand-ins::

    @recurrence
    def gla(S: State[Value, Key], q: Key, k: Key, v: Value, gk: Key.log_gate):
        S = S * exp(gk) + outer(v, k)      # S_t = S_{t-1} Diag(e^{gk_t}) + v_t k_tᵀ
        return S @ q, S                    # read-out, then every new state

Annotations say what each input is (axis, per step or per head, constraints); the body
is traced once, at definition time. Mistakes — a term non-linear in the state, mixed
feature axes, an undeclared input — raise :class:`SpecError` naming the term.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from scandsl._expr import (
    BINARY,
    Const,
    Dot,
    Eye,
    Input,
    MatVec,
    Node,
    Op,
    Outer,
    Placeholder,
    Read,
    Softmax,
)

__all__ = [
    "SpecError",
    "In",
    "Key",
    "Value",
    "Slot",
    "Scalar",
    "Param",
    "State",
    "StateDecl",
    "Sym",
    "StateSym",
    "exp",
    "log",
    "sigmoid",
    "logsigmoid",
    "softplus",
    "relu",
    "elu",
    "silu",
    "tanh",
    "sqrt",
    "abs_",
    "maximum",
    "minimum",
    "outer",
    "dot",
    "softmax",
    "eye",
    "read",
    "phi",
]


class SpecError(ValueError):
    """A spec that is not a linear recurrence the DSL can express; names the term."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class In:
    """Declaration of one input: its axes, whether it varies per step, and its constraints.

    Build them from ``Key``, ``Value``, ``Slot``, ``Scalar`` and ``Param(...)`` with the
    modifiers ``.log_gate`` (natural-log decay, must be <= 0), ``.positive``,
    ``.nonneg``, ``.param`` (time-invariant, ``[H, *axes]``) and ``.optional`` (may be None).
    """

    axes: tuple[str, ...] = ()
    time: bool = True
    is_log_gate: bool = False
    is_positive: bool = False
    is_nonneg: bool = False
    is_optional: bool = False

    @property
    def log_gate(self) -> In:
        return replace(self, is_log_gate=True)

    @property
    def positive(self) -> In:
        return replace(self, is_positive=True)

    @property
    def nonneg(self) -> In:
        return replace(self, is_nonneg=True)

    @property
    def param(self) -> In:
        return replace(self, time=False)

    @property
    def optional(self) -> In:
        return replace(self, is_optional=True)

    def shape_doc(self) -> str:
        lead = ["B", "T", "H"] if self.time else ["H"]
        return "[" + ",".join(lead + list(self.axes)) + "]"


def _axis(name: str) -> In:
    return In(axes=(name,))


Key = _axis("K")
Value = _axis("V")
Slot = _axis("M")
Scalar = In()


def Param(*axes: In) -> In:
    """A per-head parameter, e.g. ``Param()`` ``[H]``, ``Param(Value, Key)`` ``[H,V,K]``."""
    return In(axes=tuple(a.axes[0] for a in axes), time=False)


@dataclass(frozen=True, slots=True)
class StateDecl:
    axes: tuple[str, ...]


class _StateFactory:
    def __getitem__(self, axes: In | tuple[In, ...]) -> StateDecl:
        if isinstance(axes, In):
            axes = (axes,)
        return StateDecl(tuple(a.axes[0] for a in axes))


State = _StateFactory()


# --------------------------------------------------------------------------- symbols


def _lift(x: Any) -> Node:
    if isinstance(x, Sym):
        return x.node
    if isinstance(x, StateSym):
        raise SpecError(f"the state {x.name!r} appears inside a term where only inputs may appear")
    if isinstance(x, int | float):
        return Const(float(x))
    raise SpecError(f"cannot use {x!r} ({type(x).__name__}) in a spec; use inputs, numbers and DSL functions")


def _broadcast(fn: str, a: Node, b: Node) -> Node:
    if set(a.axes) <= set(b.axes):
        axes = b.axes
    elif set(b.axes) <= set(a.axes):
        axes = a.axes
    else:
        raise SpecError(
            f"{fn}: operands on axes {a.axes} and {b.axes} mix feature axes; "
            "use outer(a, b) for a matrix or dot(a, b) for a contraction"
        )
    return Op(fn, (a, b), axes)


class Sym:
    """A symbolic tensor: an input or an elementwise expression of inputs."""

    __slots__ = ("node",)

    def __init__(self, node: Node) -> None:
        self.node = node

    def _bin(self, fn: str, other: Any, flip: bool = False) -> Sym | StateSym:
        if isinstance(other, StateSym):
            return NotImplemented
        a, b = self.node, _lift(other)
        if flip:
            a, b = b, a
        return Sym(_broadcast(fn, a, b))

    def __add__(self, o):
        return self._bin("add", o)

    def __radd__(self, o):
        return self._bin("add", o, True)

    def __sub__(self, o):
        return self._bin("sub", o)

    def __rsub__(self, o):
        return self._bin("sub", o, True)

    def __mul__(self, o):
        return self._bin("mul", o)

    def __rmul__(self, o):
        return self._bin("mul", o, True)

    def __truediv__(self, o):
        return self._bin("div", o)

    def __rtruediv__(self, o):
        return self._bin("div", o, True)

    def __neg__(self):
        return Sym(Op("neg", (self.node,), self.node.axes))

    def __pow__(self, p: float):
        if not isinstance(p, int | float):
            raise SpecError("x ** p: the exponent p must be a number")
        return Sym(Op("pow", (self.node,), self.node.axes, float(p)))

    def __matmul__(self, o):
        if isinstance(o, StateSym):
            raise SpecError("x @ S: read a state as S @ q (the state on the left)")
        m, x = self.node, _lift(o)
        if len(m.axes) != 2 or x.axes != m.axes[1:]:
            raise SpecError(f"m @ x needs a matrix and a vector on its last axis; got {m.axes} @ {x.axes}")
        return Sym(MatVec(m, x))

    def __bool__(self) -> bool:
        raise SpecError("a symbolic value has no truth value: specs cannot branch on data")


@dataclass(frozen=True, slots=True)
class Affine:
    """``factors ⊙ S_{t-1} @ transition + Σ addends`` — a state expression, linear in S."""

    state: str
    axes: tuple[str, ...]
    factors: tuple[Node, ...] = ()
    transition: Node | None = None
    addends: tuple[Node, ...] = ()

    @property
    def bare(self) -> bool:
        return not self.factors and self.transition is None


class StateSym:
    """A symbolic state. Supports exactly the operations of a linear recurrence."""

    __slots__ = ("aff",)

    def __init__(self, aff: Affine) -> None:
        self.aff = aff

    @property
    def name(self) -> str:
        return self.aff.state

    def _check_axes(self, node: Node, what: str) -> None:
        if not set(node.axes) <= set(self.aff.axes):
            raise SpecError(
                f"{what}: a term on axes {node.axes} does not fit the state {self.name!r} on axes {self.aff.axes}"
            )

    def __mul__(self, o: Any) -> StateSym:
        if isinstance(o, StateSym):
            raise SpecError(f"{self.name} * {o.name}: a product of states is not linear in the state")
        g = _lift(o)
        self._check_axes(g, f"{self.name} * (...)")
        a = self.aff
        if a.addends or a.transition is not None:
            if g.axes:
                raise SpecError(
                    f"{self.name}: multiply the state by a gate before adding inputs or applying a "
                    "transition (only a scalar may scale the whole expression)"
                )
            return StateSym(
                replace(
                    a,
                    factors=a.factors + (g,),
                    addends=tuple(Op("mul", (g, u), u.axes) for u in a.addends),
                )
            )
        return StateSym(replace(a, factors=a.factors + (g,)))

    __rmul__ = __mul__

    def __add__(self, o: Any) -> StateSym:
        if isinstance(o, StateSym):
            raise SpecError(
                f"{self.name} + {o.name}: a state may appear in one term only (S_t = Λ ⊙ S_(t-1) T + U)"
            )
        u = _lift(o)
        if set(u.axes) != set(self.aff.axes) or (len(u.axes) == 2 and u.axes != self.aff.axes):
            raise SpecError(
                f"{self.name} + (...): the input term has axes {u.axes} but the state has {self.aff.axes}; "
                "for a matrix state write outer(value, key) in the state's axis order"
            )
        return StateSym(replace(self.aff, addends=self.aff.addends + (u,)))

    __radd__ = __add__

    def __sub__(self, o: Any) -> StateSym:
        return self + Sym(Op("neg", (_lift(o),), _lift(o).axes))

    def __matmul__(self, o: Any) -> Sym | StateSym:
        m = _lift(o)
        axes = self.aff.axes
        if len(m.axes) == 2 and m.axes == (axes[-1], axes[-1]):
            if self.aff.addends:
                raise SpecError(f"{self.name} @ T: apply the transition before adding inputs")
            if self.aff.transition is not None:
                raise SpecError(f"{self.name}: only one transition matrix per step")
            return StateSym(replace(self.aff, transition=m))
        return read(self, Sym(m))

    def __bool__(self) -> bool:
        raise SpecError("a symbolic state has no truth value: specs cannot branch on data")


@dataclass(frozen=True, slots=True)
class PendingRead(Node):
    """A read-out of a state expression, resolved against the new states after tracing."""

    aff: Affine
    query: Node
    axes: tuple[str, ...]

    def children(self) -> tuple[Node, ...]:
        return (self.query,)


# --------------------------------------------------------------------------- functions


def _unary(fn: str) -> Callable[[Any], Sym]:
    def f(x: Any) -> Sym:
        n = _lift(x)
        return Sym(Op(fn, (n,), n.axes))

    f.__name__ = fn
    f.__doc__ = f"Elementwise ``{fn}`` of a symbolic value."
    return f


exp = _unary("exp")
log = _unary("log")
sigmoid = _unary("sigmoid")
logsigmoid = _unary("logsigmoid")
softplus = _unary("softplus")
relu = _unary("relu")
silu = _unary("silu")
tanh = _unary("tanh")
sqrt = _unary("sqrt")
abs_ = _unary("abs")


def elu(x: Any) -> Sym:
    """``elu(x)`` (use ``elu(x) + 1`` for the linear-transformer feature map)."""
    return Sym(Op("sub", (_unary("elu1")(x).node, Const(1.0)), _lift(x).axes))


def _binary(fn: str) -> Callable[[Any, Any], Sym]:
    assert fn in BINARY

    def f(a: Any, b: Any) -> Sym:
        return Sym(_broadcast(fn, _lift(a), _lift(b)))

    f.__name__ = fn
    return f


maximum = _binary("maximum")
minimum = _binary("minimum")


def outer(a: Any, b: Any) -> Sym:
    """``a bᵀ`` for vectors on two different axes: a matrix on axes ``(a, b)``."""
    na, nb = _lift(a), _lift(b)
    if len(na.axes) != 1 or len(nb.axes) != 1:
        raise SpecError(f"outer(a, b) takes two vectors; got axes {na.axes} and {nb.axes}")
    return Sym(Outer(na, nb))


def dot(a: Any, b: Any) -> Sym:
    """``aᵀ b`` over a common axis; ``dot(z, q)`` reads a vector state ``z``."""
    if isinstance(a, StateSym):
        return read(a, b)
    if isinstance(b, StateSym):
        return read(b, a)
    na, nb = _lift(a), _lift(b)
    if len(na.axes) != 1 or na.axes != nb.axes:
        raise SpecError(f"dot(a, b) takes two vectors on one axis; got {na.axes} and {nb.axes}")
    return Sym(Dot(na, nb))


def softmax(x: Any) -> Sym:
    n = _lift(x)
    if len(n.axes) != 1:
        raise SpecError(f"softmax(x) takes a vector; got axes {n.axes}")
    return Sym(Softmax(n))


def eye(axis: In) -> Sym:
    """The identity on ``axis`` (``eye(Key)``), for transitions such as ``eye(Key) − β kkᵀ``."""
    return Sym(Eye(axis.axes[0]))


def read(state: StateSym, query: Any) -> Sym:
    """``S q`` for a vector ``q`` on the state's last axis (a scalar for a vector state); or, for
    ``C`` shaped like the state, the row-wise ``Σ_k S[:, k] C[:, k]`` (S4's output matrix)."""
    if not isinstance(state, StateSym):
        raise SpecError("read(S, q): the first argument must be a state")
    q = _lift(query)
    axes = state.aff.axes
    if q.axes == axes[-1:]:
        return Sym(PendingRead(state.aff, q, axes[:-1]))
    if q.axes == axes and len(axes) == 2:
        return Sym(PendingRead(state.aff, q, axes[:1]))
    raise SpecError(
        f"read({state.name}, ...): the query has axes {q.axes}; the state {state.name!r} on axes {axes} "
        f"reads a vector on {axes[-1:]} or a matrix on {axes}"
    )


def phi(x: Any) -> Sym:
    """The spec's feature map, chosen per call with ``feature_map=`` (identity by default)."""
    n = _lift(x)
    return Sym(Op("phi", (n,), n.axes))


def trace_feature_map(fn: Callable[[Sym], Sym]) -> Node:
    """A user feature map written in the DSL, as a template over a Placeholder."""
    out = fn(Sym(Placeholder()))
    if not isinstance(out, Sym) or out.node.axes != ("_",):
        raise SpecError("feature_map: a DSL feature map must be elementwise, e.g. lambda x: relu(x) ** 2")
    return out.node


def _signature(fn: Callable) -> tuple[dict[str, StateDecl], dict[str, In]]:
    states: dict[str, StateDecl] = {}
    inputs: dict[str, In] = {}
    try:
        # resolves string annotations (modules with `from __future__ import annotations`)
        params = inspect.signature(fn, eval_str=True).parameters
    except NameError as err:
        raise SpecError(f"{fn.__name__}: an annotation does not resolve: {err}") from None
    for name, p in params.items():
        ann = p.annotation
        if isinstance(ann, StateDecl):
            if inputs:
                raise SpecError(f"{fn.__name__}: declare states ({name}) before inputs")
            states[name] = ann
        elif isinstance(ann, In):
            inputs[name] = ann
        else:
            raise SpecError(
                f"{fn.__name__}: parameter {name!r} needs an annotation: State[...] for a state, "
                "or an input declaration such as Key, Value, Scalar.log_gate, Param(Value, Key)"
            )
    if not states:
        raise SpecError(f"{fn.__name__}: a recurrence needs at least one State[...] parameter")
    return states, inputs


def trace(fn: Callable) -> tuple[dict[str, StateDecl], dict[str, In], Node, dict[str, Affine]]:
    """Run ``fn`` on symbols: (states, inputs, output node, new-state expressions)."""
    states, inputs = _signature(fn)
    args: dict[str, Any] = {n: StateSym(Affine(n, d.axes)) for n, d in states.items()}
    args.update({n: Sym(Input(n, d.axes, d.time)) for n, d in inputs.items()})
    result = fn(**args)
    if not isinstance(result, tuple) or len(result) != 1 + len(states):
        raise SpecError(
            f"{fn.__name__}: return the read-out followed by every new state, "
            f"i.e. `return out, {', '.join(states)}`"
        )
    out, *new = result
    if isinstance(out, StateSym):
        raise SpecError(f"{fn.__name__}: the read-out is a state; read it, e.g. `S @ q`")
    out_node = _lift(out)
    new_states: dict[str, Affine] = {}
    for name, s in zip(states, new):
        if not isinstance(s, StateSym) or s.name != name:
            raise SpecError(f"{fn.__name__}: return value for state {name!r} must be its new value")
        if not s.aff.addends:
            raise SpecError(f"{fn.__name__}: the update of {name!r} has no input term (S = ... + U)")
        new_states[name] = s.aff
    return states, inputs, _resolve_reads(fn.__name__, out_node, new_states), new_states


def _resolve_reads(fname: str, node: Node, new_states: dict[str, Affine]) -> Node:
    from scandsl._expr import replace as rebuild

    def fix(n: Node) -> Node | None:
        if not isinstance(n, PendingRead):
            return None
        q = rebuild(n.query, fix)
        aff = n.aff
        if aff == new_states.get(aff.state):
            return Read(aff.state, "new", q, n.axes)
        if aff.bare:
            # (S_{t-1} + Σ U) q  ->  S_{t-1} q + Σ U q     (RWKV-6's bonus)
            out: Node = Read(aff.state, "prev", q, n.axes)
            for u in aff.addends:
                term = MatVec(u, q) if len(u.axes) == 2 else Dot(u, q)
                out = Op("add", (out, term), n.axes)
            return out
        raise SpecError(
            f"{fname}: a read-out of {aff.state!r} must read S_(t-1) or the returned new state; "
            "it reads a partially updated state"
        )

    return rebuild(node, fix)
