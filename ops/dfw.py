"""Decaying fast weights (Mao 2022): an outer-product gate."""

from scandsl import Key, State, Value, exp, outer, recurrence
from scandsl._entry import apply


@recurrence(formula="S_t = S_{t-1} ⊙ (e^{gv_t} (e^{gk_t})ᵀ) + v_t k_tᵀ ;  o_t = S_t q_t")
def dfw_spec(S: State[Value, Key], q: Key, k: Key, v: Value, gv: Value.log_gate, gk: Key.log_gate):
    S = S * exp(gv) * exp(gk) + outer(v, k)
    return S @ q, S


def dfw(
    q,
    k,
    v,
    gv,
    gk,
    *,
    scale=None,
    initial_state=None,
    output_final_state=False,
    strategy="auto",
    cu_seqlens=None,
):
    """DFW with per-value ``gv`` and per-key ``gk`` log-decays."""
    return apply(dfw_spec, locals())
