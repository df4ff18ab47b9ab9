"""DeltaNet (Schlag et al. 2021; Yang et al. 2024): the delta rule."""

from scandsl import Key, Scalar, State, Value, eye, outer, recurrence
from scandsl._entry import apply


@recurrence(formula="S_t = S_{t-1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ ;  o_t = S_t q_t")
def deltanet_spec(S: State[Value, Key], q: Key, k: Key, v: Value, beta: Scalar):
    S = S @ (eye(Key) - beta * outer(k, k)) + outer(beta * v, k)
    return S @ q, S


def deltanet(
    q,
    k,
    v,
    beta,
    *,
    scale=None,
    initial_state=None,
    output_final_state=False,
    strategy="auto",
    cu_seqlens=None,
):
    """DeltaNet; ``beta`` ``[B,T,H]`` is the writing strength (usually in (0, 1))."""
    return apply(deltanet_spec, locals())
