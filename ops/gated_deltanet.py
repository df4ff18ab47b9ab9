"""Gated DeltaNet (Yang et al. 2024): the delta rule with a scalar decay."""

from scandsl import Key, Scalar, State, Value, exp, eye, outer, recurrence
from scandsl._entry import apply


@recurrence(formula="S_t = S_{t-1}(e^{g_t}(I − β_t k_t k_tᵀ)) + β_t v_t k_tᵀ ;  o_t = S_t q_t")
def gated_deltanet_spec(S: State[Value, Key], q: Key, k: Key, v: Value, g: Scalar.log_gate, beta: Scalar):
    S = S * exp(g) @ (eye(Key) - beta * outer(k, k)) + outer(beta * v, k)
    return S @ q, S


def gated_deltanet(
    q,
    k,
    v,
    g,
    beta,
    *,
    scale=None,
    initial_state=None,
    output_final_state=False,
    strategy="auto",
    cu_seqlens=None,
):
    """Gated DeltaNet with scalar log-decay ``g`` and writing strength ``beta`` (both ``[B,T,H]``)."""
    return apply(gated_deltanet_spec, locals())
