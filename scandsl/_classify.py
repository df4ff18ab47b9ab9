"""Classification: a traced Spec -> its normal form (a DAG of core recurrences).

The lowering is a visible list of named passes, each a pure function::

    extract_stages   one core stage per state: decay logs, transition, rank-one input, read-out
    fuse_normalisers a vector state z (same decay, key and query as a matrix state S) becomes
                     one extra value column of S's stage — "v ≡ 1", fused for free
    order_stages     a topological order of the stage DAG (ABC/GSA: softmax feeds stage 2)
    legal_strategies which kernel strategies can run every stage

With ``SCANDSL_CHECK_IR=1`` the normal form is checked between passes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import networkx as nx

from scandsl import knobs
from scandsl._core import CoreSig, Decay, Readout, Transition
from scandsl._dsl import Affine, SpecError
from scandsl._expr import Const, Eye, Input, Node, Op, Outer, Read, walk

__all__ = ["Stage", "NormalForm", "classify", "PASSES", "is_static"]


class NotLowerable(Exception):
    """The spec is a valid recurrence but has no kernel normal form (reference only)."""


@dataclass(frozen=True, slots=True)
class Stage:
    """One core recurrence: the nodes that compute its CoreInputs, and where its reads go."""

    states: tuple[str, ...]  # matrix state first; fused vector states after it
    sig: CoreSig
    q: Node
    k: Node
    values: tuple[Node, ...]  # value columns: the matrix state's v, then one scalar per fused z
    g: Node | None = None
    gk: Node | None = None
    gv: Node | None = None
    A: Node | None = None
    beta: Node | None = None

    def reads(self) -> tuple[Read, ...]:
        """The Read nodes this stage answers, in value-column order."""
        version = "prev" if self.sig.readout is Readout.BEFORE else "new"
        out = []
        for i, s in enumerate(self.states):
            axes = self.values[i].axes[:1] if i == 0 and self.values[i].axes else ()
            out.append(Read(s, version, self.q, axes))
        return tuple(out)

    def operand_nodes(self) -> dict[str, Node]:
        names = ("q", "k", "g", "gk", "gv", "A", "beta")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass(frozen=True, slots=True)
class NormalForm:
    stages: tuple[Stage, ...]
    kernel_strategies: tuple[str, ...]
    reason: str = ""  # why kernels are illegal, when they are

    def describe(self) -> str:
        if not self.stages:
            return f"reference only: {self.reason}"
        lines = []
        for i, st in enumerate(self.stages):
            lines.append(f"stage {i} ({' + '.join(st.states)}): {st.sig.describe()}")
        return "\n".join(lines)


def is_static(node: Node) -> bool:
    """True when ``node`` depends on per-head parameters and constants only."""
    return all(not (isinstance(n, Input) and n.time) for n in walk(node)) and not any(
        isinstance(n, Read) for n in walk(node)
    )


# ----------------------------------------------------------------------------- helpers


def _mul(a: Node | None, b: Node) -> Node:
    if a is None:
        return b
    axes = a.axes if len(a.axes) >= len(b.axes) else b.axes
    return Op("mul", (a, b), axes)


def _add(a: Node | None, b: Node | None) -> Node | None:
    if a is None:
        return b
    if b is None:
        return a
    axes = a.axes if len(a.axes) >= len(b.axes) else b.axes
    return Op("add", (a, b), axes)


def _factors(node: Node) -> list[Node]:
    """Flatten a product into its factors (``-x`` contributes the factor ``-1``)."""
    if isinstance(node, Op) and node.fn == "mul":
        return _factors(node.args[0]) + _factors(node.args[1])
    if isinstance(node, Op) and node.fn == "neg":
        return [Const(-1.0)] + _factors(node.args[0])
    return [node]


def log_of(node: Node) -> Node:
    """``log`` of a positive gate factor, simplified where the form is known."""
    if isinstance(node, Op):
        if node.fn == "exp":
            return node.args[0]
        if node.fn == "sigmoid":
            return Op("logsigmoid", node.args, node.axes)
        if node.fn == "pow":
            return Op("mul", (Const(node.param), log_of(node.args[0])), node.axes)
        if node.fn == "mul":
            return Op("add", (log_of(node.args[0]), log_of(node.args[1])), node.axes)
    return Op("log", (node,), node.axes)


# ----------------------------------------------------------------------------- passes


def _decay(name: str, aff: Affine) -> tuple[Decay, dict[str, Node]]:
    va, ka = (aff.axes[0], aff.axes[1]) if len(aff.axes) == 2 else (None, aff.axes[0])
    scalar = key = value = None
    channel: tuple[Node, Node] | None = None
    for f in aff.factors:
        lg = log_of(f)
        if lg.axes == ():
            scalar = _add(scalar, lg)
        elif lg.axes == (ka,):
            key = _add(key, lg)
        elif lg.axes == (va,):
            value = _add(value, lg)
        else:
            parts = _factors(lg)
            per_v = [p for p in parts if p.axes in ((va,), ())]
            mats = [p for p in parts if p.axes == (va, ka)]
            if len(mats) != 1 or not is_static(mats[0]) or channel is not None:
                raise NotLowerable(
                    f"{name}: a per-element decay must read (per-value gate) × (per-head [V,K] parameter), "
                    "e.g. exp(-dt * exp(A_log))"
                )
            # constant factors join the static [V, K] matrix, not the per-step gate: mamba's
            # exp(-dt ⊗ e^{A_log}) runs as exp(dt ⊗ (-e^{A_log})), and -dt is never a [B,T,H,V] pass
            gv: Node | None = None
            mat = mats[0]
            for p in per_v:
                if isinstance(p, Const):
                    mat = Op("mul", (p, mat), mat.axes)
                else:
                    gv = _mul(gv, p)
            channel = (gv if gv is not None else Const(1.0, aff.axes[:1]), mat)
    if channel is not None:
        if scalar is not None or key is not None or value is not None:
            raise NotLowerable(f"{name}: a per-element decay cannot be combined with other gates")
        return Decay.CHANNEL, {"gv": channel[0], "A": channel[1]}
    if key is not None and value is not None:
        return Decay.OUTER, {"gk": _add(key, scalar) or key, "gv": value}
    if key is not None:
        return Decay.KEY, {"gk": _add(key, scalar) or key}
    if value is not None:
        return Decay.VALUE, {"gv": _add(value, scalar) or value}
    if scalar is not None:
        return Decay.SCALAR, {"g": scalar}
    return Decay.NONE, {}


def _input(name: str, aff: Affine) -> tuple[Node, Node, bool]:
    """(value node, key node, key_static) of the single rank-one input term."""
    if len(aff.addends) != 1:
        raise NotLowerable(f"{name}: {len(aff.addends)} input terms; the kernels take one rank-one term")
    va, ka = (aff.axes[0], aff.axes[1]) if len(aff.axes) == 2 else (None, aff.axes[0])
    value: Node | None = None
    key: Node | None = None
    static_key: Node | None = None
    outers = 0
    for f in _factors(aff.addends[0]):
        if isinstance(f, Outer):
            outers += 1
            value, key = _mul(value, f.a), _mul(key, f.b)
        elif f.axes in ((), (va,)):
            value = _mul(value, f)
        elif f.axes == (ka,):
            key = _mul(key, f)
        elif f.axes == (va, ka) and is_static(f) and static_key is None:
            static_key = f
        else:
            raise NotLowerable(f"{name}: the input term is not rank-one (factor on axes {f.axes})")
    if static_key is not None:
        if outers or key is not None:
            raise NotLowerable(f"{name}: an input matrix cannot be combined with a key vector")
        return value if value is not None else Const(1.0, aff.axes[:1]), static_key, True
    if key is None or (va is not None and (value is None or value.axes != (va,))):
        raise NotLowerable(f"{name}: the input term is not (value)(key)ᵀ")
    return value if value is not None else Const(1.0), key, False


def _transition(name: str, aff: Affine, key: Node) -> Node | None:
    """β of a delta transition ``I − β k kᵀ`` (checked to share the input's key)."""
    t = aff.transition
    if t is None:
        return None
    if not (isinstance(t, Op) and t.fn == "sub" and isinstance(t.args[0], Eye)):
        raise NotLowerable(f"{name}: the transition must read eye(Key) - beta * outer(k, k)")
    beta: Node | None = None
    outer_ = None
    for f in _factors(t.args[1]):
        if isinstance(f, Outer):
            outer_ = f
        elif f.axes == ():
            beta = _mul(beta, f)
        else:
            raise NotLowerable(f"{name}: delta transition coefficient must be a scalar per step")
    if outer_ is None or outer_.a != outer_.b:
        raise NotLowerable(f"{name}: the transition must read eye(Key) - beta * outer(k, k)")
    if outer_.a != key:
        raise NotLowerable(f"{name}: the delta transition's key must be the input term's key")
    return beta if beta is not None else Const(1.0)


def extract_stages(spec) -> list[Stage]:
    reads: dict[str, set[tuple[str, Node]]] = {}
    for n in walk(spec.output):
        if isinstance(n, Read):
            reads.setdefault(n.state, set()).add((n.version, n.query))
    stages = []
    for name, aff in spec.updates:
        if len(aff.axes) > 2:
            raise NotLowerable(f"{name}: states have at most two axes")
        got = reads.get(name, set())
        if len(got) != 1:
            raise NotLowerable(
                f"{name}: the kernels read each state exactly once; it is read {len(got)} times"
            )
        ((version, query),) = got
        value, key, key_static = _input(name, aff)
        decay, d = _decay(name, aff)
        beta = _transition(name, aff, key)
        query_static = len(query.axes) == 2
        if query_static and not is_static(query):
            raise NotLowerable(f"{name}: a matrix read-out must be a per-head parameter")
        decay_static = decay is Decay.CHANNEL and is_static(d["gv"])
        if (key_static or query_static) and decay is not Decay.CHANNEL:
            raise NotLowerable(f"{name}: input / read-out matrices need a per-channel decay")
        try:
            sig = CoreSig(
                decay=decay,
                transition=Transition.DELTA if beta is not None else Transition.IDENTITY,
                readout=Readout.BEFORE if version == "prev" else Readout.AFTER,
                key_static=key_static,
                query_static=query_static,
                decay_static=decay_static,
            )
        except ValueError as err:
            raise NotLowerable(f"{name}: {err}") from None
        stages.append(Stage((name,), sig, query, key, (value,), beta=beta, **d))
    return stages


def fuse_normalisers(stages: list[Stage]) -> list[Stage]:
    """Merge each vector-state stage into a matrix stage with identical decay/key/query."""
    out = [s for s in stages if s.values[0].axes]
    for z in (s for s in stages if not s.values[0].axes):
        for i, s in enumerate(out):
            same = (s.sig, s.k, s.q, s.g, s.gk, s.gv, s.A, s.beta) == (
                z.sig,
                z.k,
                z.q,
                z.g,
                z.gk,
                z.gv,
                z.A,
                z.beta,
            )
            if same:
                out[i] = replace(s, states=s.states + z.states, values=s.values + z.values)
                break
        else:
            out.append(z)  # a lone vector state: its own stage with V = 1
    return out


def order_stages(stages: list[Stage]) -> list[Stage]:
    graph = nx.DiGraph()
    owner = {state: i for i, st in enumerate(stages) for state in st.states}
    graph.add_nodes_from(range(len(stages)))
    for i, st in enumerate(stages):
        operands = list(st.operand_nodes().values()) + list(st.values)
        for node in operands:
            for n in walk(node):
                if isinstance(n, Read):
                    graph.add_edge(owner[n.state], i)
    try:
        order = list(nx.topological_sort(graph))
    except nx.NetworkXUnfeasible:
        raise SpecError("the stages read each other's outputs in a cycle") from None
    return [stages[i] for i in order]


def legal_strategies(stages: list[Stage]) -> tuple[str, ...]:
    legal = ["sequential"]
    if all(s.sig.transition is Transition.IDENTITY for s in stages):
        legal.append("scan")
    if all(s.sig.decay.factorable for s in stages):
        legal.append("chunk")
    return tuple(legal)


def check(stages: list[Stage]) -> None:
    """IR invariants between passes (SCANDSL_CHECK_IR=1)."""
    for st in stages:
        assert st.states and len(st.states) == len(st.values), st
        assert st.values[0].axes or len(st.states) == 1, "a fused stage must lead with its matrix state"
        for name in st.sig.uses:
            assert getattr(st, name) is not None, f"{st.states}: sig uses {name} but it is unset"


PASSES = (extract_stages, fuse_normalisers, order_stages)


def classify(spec) -> NormalForm:
    try:
        ir = PASSES[0](spec)
        for p in PASSES[1:]:
            if knobs.check_ir():
                check(ir)
            ir = p(ir)
        if knobs.check_ir():
            check(ir)
    except NotLowerable as err:
        return NormalForm((), (), str(err))
    return NormalForm(tuple(ir), legal_strategies(ir))
