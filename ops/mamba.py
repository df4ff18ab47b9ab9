"""Mamba's selective SSM (Gu & Dao 2023), per channel: q = C, k = B, v = x; N is the Key axis."""

from scandsl import Key, Param, State, Value, exp, outer, recurrence
from scandsl._entry import apply


@recurrence(
    formula="S_t = S_{t-1} ⊙ exp(−(dt_t 1ᵀ) ⊙ e^{A_log}) + (dt_t ⊙ v_t) k_tᵀ ;  o_t = S_t q_t + D ⊙ v_t"
)
def mamba_spec(
    S: State[Value, Key],
    q: Key,
    k: Key,
    v: Value,
    dt: Value.positive,
    A_log: Param(Value, Key),
    D: Param(Value).optional,
):
    S = S * exp(-dt * exp(A_log)) + outer(dt * v, k)
    return S @ q + D * v, S


def mamba(
    q,
    k,
    v,
    dt,
    A_log,
    D=None,
    *,
    scale=None,
    initial_state=None,
    output_final_state=False,
    strategy="auto",
    cu_seqlens=None,
):
    """Mamba (S6): ``q`` = C, ``k`` = B ``[B,T,H,N]``, ``v`` = x and ``dt`` > 0 ``[B,T,H,V]``; state ``[B,H,N,V]``.

    Like every op, ``scale=None`` multiplies C by ``N ** -0.5``; pass ``scale=1.0`` for Mamba's own form.
    """
    return apply(mamba_spec, locals())
