"""HGRN-2 (Qin et al. 2024): the forget gate's complement is the key."""

from scandsl import Key, State, Value, exp, outer, recurrence
from scandsl._entry import apply


@recurrence(formula="S_t = S_{t-1} Diag(α_t) + v_t (1 − α_t)ᵀ, α_t = e^{gk_t} ;  o_t = S_t q_t")
def hgrn2_spec(S: State[Value, Key], q: Key, v: Value, gk: Key.log_gate):
    S = S * exp(gk) + outer(v, 1 - exp(gk))
    return S @ q, S


def hgrn2(
    q, v, gk, *, scale=None, initial_state=None, output_final_state=False, strategy="auto", cu_seqlens=None
):
    """HGRN-2: no ``k``; the key is ``1 − e^{gk}``."""
    return apply(hgrn2_spec, locals())
