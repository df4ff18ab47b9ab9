"""Mamba-2 / SSD (Dao & Gu 2024), the scalar-decay form (FLA's simple GLA)."""

from scandsl import Key, Scalar, State, Value, exp, outer, recurrence
from scandsl._entry import apply


@recurrence(formula="S_t = e^{g_t} S_{t-1} + v_t k_tᵀ ;  o_t = S_t q_t")
def mamba2_spec(S: State[Value, Key], q: Key, k: Key, v: Value, g: Scalar.log_gate):
    S = S * exp(g) + outer(v, k)
    return S @ q, S


def mamba2(
    q, k, v, g, *, scale=None, initial_state=None, output_final_state=False, strategy="auto", cu_seqlens=None
):
    """Mamba-2 with scalar log-decay ``g`` ``[B,T,H]``."""
    return apply(mamba2_spec, locals())
