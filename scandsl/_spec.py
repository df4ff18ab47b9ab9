"""Specs: the frozen result of tracing a recurrence, and the ``@recurrence`` decorator."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING

from scandsl._dsl import Affine, In, SpecError, StateDecl, trace, trace_feature_map
from scandsl._expr import Node, Op, Placeholder, replace, walk

if TYPE_CHECKING:
    from scandsl._classify import NormalForm

__all__ = ["Spec", "recurrence", "FEATURE_MAPS"]

# named feature maps; a callable written in the DSL is accepted too
FEATURE_MAPS: dict[str, Callable[[Node], Node] | None] = {
    "identity": None,
    "elu+1": lambda x: Op("elu1", (x,), x.axes),
    "relu": lambda x: Op("relu", (x,), x.axes),
}


@dataclass(frozen=True, slots=False)
class Spec:
    """A traced recurrence. Structural equality; ``key`` is a stable content hash."""

    name: str
    states: tuple[tuple[str, StateDecl], ...]
    inputs: tuple[tuple[str, In], ...]
    output: Node
    updates: tuple[tuple[str, Affine], ...]
    formula: str = ""
    doc: str = ""
    scaled: str | None = "q"
    feature_map: str = "identity"
    _source: Callable | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        declared = {n for n, _ in self.inputs}
        for node in self.all_nodes():
            from scandsl._expr import Input

            if isinstance(node, Input) and node.name not in declared:
                raise SpecError(f"{self.name}: term uses undeclared input {node.name!r}")
        if self.scaled is not None and self.scaled not in declared:
            object.__setattr__(self, "scaled", None)

    # ----------------------------------------------------------------- views
    def all_nodes(self):
        roots = [self.output]
        for _, aff in self.updates:
            roots += list(aff.factors) + list(aff.addends)
            if aff.transition is not None:
                roots.append(aff.transition)
        for r in roots:
            yield from walk(r)

    def __hash__(self) -> int:
        # every op call looks its spec up in memo tables; the structural hash walks the whole
        # expression tree, so it is computed once (specs are not pickled: a str hash is per process)
        try:
            return self.__dict__["_hash"]
        except KeyError:
            h = self.__dict__["_hash"] = hash(
                (self.name, self.states, self.inputs, self.output, self.updates, self.formula, self.doc,
                 self.scaled, self.feature_map)
            )  # fmt: skip
            return h

    @cached_property
    def input_decls(self) -> Mapping[str, In]:
        return MappingProxyType(dict(self.inputs))

    @cached_property
    def state_decls(self) -> Mapping[str, StateDecl]:
        return MappingProxyType(dict(self.states))

    @cached_property
    def branches_on_readout(self) -> bool:
        """Whether the output takes a ``max`` / ``min`` / ``abs`` of something a state reads (mLSTM's
        ``max(1, |z·q|)``): rounding in the read-out can flip the branch, and with it the
        gradient, so the kernels keep mixed-precision operands wide (scandsl._core)."""
        from scandsl._expr import Read

        return any(
            isinstance(n, Op) and n.fn in ("maximum", "minimum", "abs") and any(isinstance(m, Read) for m in walk(n))
            for n in walk(self.output)
        )

    @cached_property
    def uses_feature_map(self) -> bool:
        return any(isinstance(n, Op) and n.fn == "phi" for n in self.all_nodes())

    @cached_property
    def key(self) -> str:
        text = repr((self.name, self.states, self.inputs, self.output, self.updates, self.feature_map))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @cached_property
    def normal_form(self) -> NormalForm:
        from scandsl._classify import classify

        return classify(self)

    @property
    def legal_strategies(self) -> tuple[str, ...]:
        return ("reference",) + self.normal_form.kernel_strategies

    # ----------------------------------------------------------------- specialise
    def with_feature_map(self, feature_map: str | Callable | None) -> Spec:
        """This spec with its ``phi(...)`` placeholders bound to a concrete feature map.

        Memoised per spec and feature map (a name or the callable itself): every call of an op
        goes through here, and a fresh spec would be classified again each time.
        """
        memo = self.__dict__.setdefault("_bound", {})
        try:
            hit = memo.get(feature_map)
        except TypeError:  # an unhashable callable: bind it afresh
            return self._bind_feature_map(feature_map)
        if hit is None:
            if len(memo) >= 64:  # callables made afresh per call must not grow it without end
                memo.clear()
            hit = memo[feature_map] = self._bind_feature_map(feature_map)
        return hit

    def _bind_feature_map(self, feature_map: str | Callable | None) -> Spec:
        if not self.uses_feature_map:
            if feature_map not in (None, "identity"):
                raise ValueError(f"feature_map: {self.name} has no feature map; got {feature_map!r}")
            return self
        if feature_map is None:
            feature_map = "identity"
        if isinstance(feature_map, str):
            if feature_map not in FEATURE_MAPS:
                raise ValueError(
                    f"feature_map: expected one of {sorted(FEATURE_MAPS)} or a DSL callable, got {feature_map!r}"
                )
            make = FEATURE_MAPS[feature_map]
            label = feature_map
        elif callable(feature_map):
            template = trace_feature_map(feature_map)
            make = lambda x: _instantiate(template, x)
            label = f"custom:{getattr(feature_map, '__name__', 'fn')}:{hash(template) & 0xFFFFFFFF:08x}"
        else:
            raise ValueError(
                f"feature_map: expected None, a name or a callable, got {type(feature_map).__name__}"
            )

        def bind(n: Node) -> Node | None:
            if isinstance(n, Op) and n.fn == "phi":
                inner = replace(n.args[0], bind)
                return inner if make is None else make(inner)
            return None

        def bind_aff(a: Affine) -> Affine:
            return Affine(
                a.state,
                a.axes,
                tuple(replace(f, bind) for f in a.factors),
                None if a.transition is None else replace(a.transition, bind),
                tuple(replace(u, bind) for u in a.addends),
            )

        return Spec(
            name=self.name,
            states=self.states,
            inputs=self.inputs,
            output=replace(self.output, bind),
            updates=tuple((n, bind_aff(a)) for n, a in self.updates),
            formula=self.formula,
            doc=self.doc,
            scaled=self.scaled,
            feature_map=label,
            _source=self._source,
        )


def _instantiate(template: Node, x: Node) -> Node:
    """Substitute ``x`` for the Placeholder of an elementwise template (axes follow ``x``)."""
    if isinstance(template, Placeholder):
        return x
    if isinstance(template, Op):
        args = tuple(_instantiate(a, x) for a in template.args)
        return Op(template.fn, args, x.axes, template.param)
    return template


def recurrence(
    fn: Callable | None = None, *, name: str | None = None, formula: str = "", scaled: str | None = "q"
):
    """Decorator: trace ``fn`` into a :class:`Spec` (errors surface here, at definition time).

    ``scaled`` names the input that the op's ``scale=`` multiplies (``q`` by default).
    """

    def build(f: Callable) -> Spec:
        states, inputs, out, new = trace(f)
        spec = Spec(
            name=name or f.__name__.removesuffix("_spec"),
            states=tuple(states.items()),
            inputs=tuple(inputs.items()),
            output=out,
            updates=tuple(new.items()),
            formula=formula,
            doc=(f.__doc__ or "").strip(),
            scaled=scaled,
            _source=f,
        )
        return spec

    return build(fn) if fn is not None else build
