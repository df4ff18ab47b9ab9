"""scandsl: write a linear recurrence as a spec, get fused kernels for it.

>>> from scandsl import recurrence, State, Key, Value, exp, outer
>>> @recurrence
... def gla(S: State[Value, Key], q: Key, k: Key, v: Value, gk: Key.log_gate):
...     S = S * exp(gk) + outer(v, k)
...     return S @ q, S
"""

from scandsl._dsl import (
    In,
    Key,
    Param,
    Scalar,
    Slot,
    SpecError,
    State,
    Value,
    abs_,
    dot,
    elu,
    exp,
    eye,
    log,
    logsigmoid,
    maximum,
    minimum,
    outer,
    phi,
    read,
    relu,
    sigmoid,
    silu,
    softmax,
    softplus,
    sqrt,
    tanh,
)
from scandsl._spec import Spec, recurrence

__version__ = "0.1.0"


from scandsl._decode import step  # noqa: E402


def run(spec: Spec, /, **inputs):
    """Run any spec (e.g. your own) with the common options: ``run(my_spec, q=q, k=k, ..., strategy="auto")``."""
    from scandsl._entry import apply

    return apply(spec, inputs)


__all__ = [
    "recurrence",
    "run",
    "step",
    "Spec",
    "SpecError",
    "State",
    "In",
    "Key",
    "Value",
    "Slot",
    "Scalar",
    "Param",
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
