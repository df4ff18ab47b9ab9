"""Gated random-feature attention (Peng et al. 2021)."""

from scandsl import Key, Scalar, State, Value, dot, exp, outer, recurrence
from scandsl._entry import apply


@recurrence(
    formula="S_t = e^{g_t} S_{t-1} + (1 − e^{g_t}) v_t k_tᵀ, z_t = e^{g_t} z_{t-1} + (1 − e^{g_t}) k_t ;  o_t = S_t q_t / (z_tᵀ q_t)"
)
def gated_rfa_spec(S: State[Value, Key], z: State[Key], q: Key, k: Key, v: Value, g: Scalar.log_gate):
    S = S * exp(g) + (1 - exp(g)) * outer(v, k)
    z = z * exp(g) + (1 - exp(g)) * k
    return (S @ q) / dot(z, q), S, z


def gated_rfa(
    q, k, v, g, *, scale=None, initial_state=None, output_final_state=False, strategy="auto", cu_seqlens=None
):
    """Gated RFA; the final state is ``(S, z)``."""
    return apply(gated_rfa_spec, locals())
