"""S4 / diagonal SSM (Gu et al.), per channel and time-invariant: A, B, C, D per head and channel."""

from scandsl import Key, Param, State, Value, exp, read, recurrence
from scandsl._entry import apply


@recurrence(
    scaled=None,
    formula="S_t = S_{t-1} ⊙ exp(−(dt 1ᵀ) ⊙ e^{A_log}) + B ⊙ (v_t 1ᵀ) ;  o_t = (S_t ⊙ C) 1 + D ⊙ v_t",
)
def s4_spec(
    S: State[Value, Key],
    v: Value,
    dt: Param(Value).positive,
    A_log: Param(Value, Key),
    B: Param(Value, Key),
    C: Param(Value, Key),
    D: Param(Value),
):
    S = S * exp(-dt * exp(A_log)) + B * v
    return read(S, C) + D * v, S


def s4(
    v,
    dt,
    A_log,
    B,
    C,
    D,
    *,
    scale=None,
    initial_state=None,
    output_final_state=False,
    strategy="auto",
    cu_seqlens=None,
):
    """S4 with a diagonal state of size N per channel (the Key axis holds N); state ``[B,H,N,V]``."""
    return apply(s4_spec, locals())
