"""Expression nodes -> sympy, for readable formulas in `scandsl show` and the generated docs."""

from __future__ import annotations

import sympy as sp

from scandsl._expr import Const, Dot, Eye, Input, MatVec, Node, Op, Outer, Placeholder, Read, Softmax

__all__ = ["to_sympy"]

_FN = {
    "exp": sp.exp,
    "log": sp.log,
    "abs": sp.Abs,
    "sqrt": sp.sqrt,
    "tanh": sp.tanh,
    "neg": lambda x: -x,
}


def to_sympy(node: Node) -> sp.Expr:
    """A sympy expression for ``node``; vectors and matrices appear as named symbols."""
    if isinstance(node, Input):
        return sp.Symbol(node.name)
    if isinstance(node, Const):
        return sp.nsimplify(node.value)
    if isinstance(node, Placeholder):
        return sp.Symbol("x")
    if isinstance(node, Eye):
        return sp.Symbol("I")
    if isinstance(node, Read):
        state = sp.Symbol(node.state + ("_prev" if node.version == "prev" else ""))
        return sp.Function("read")(state, to_sympy(node.query))
    if isinstance(node, Op):
        args = [to_sympy(a) for a in node.args]
        if node.fn == "pow":
            return args[0] ** sp.nsimplify(node.param)
        if node.fn in _FN:
            return _FN[node.fn](args[0])
        if node.fn == "add":
            return args[0] + args[1]
        if node.fn == "sub":
            return args[0] - args[1]
        if node.fn == "mul":
            return args[0] * args[1]
        if node.fn == "div":
            return args[0] / args[1]
        return sp.Function(node.fn)(*args)
    if isinstance(node, Outer):
        return sp.Function("outer")(to_sympy(node.a), to_sympy(node.b))
    if isinstance(node, Dot):
        return sp.Function("dot")(to_sympy(node.a), to_sympy(node.b))
    if isinstance(node, MatVec):
        return sp.Function("matvec")(to_sympy(node.m), to_sympy(node.x))
    if isinstance(node, Softmax):
        return sp.Function("softmax")(to_sympy(node.x))
    return sp.Symbol(type(node).__name__)
