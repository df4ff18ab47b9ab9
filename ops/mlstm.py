"""mLSTM (Beck et al. 2024, xLSTM): exponential input gate, normaliser with |·| and max(1, ·)."""

from scandsl import Key, Scalar, State, Value, abs_, dot, exp, maximum, outer, recurrence
from scandsl._entry import apply


@recurrence(
    formula="S_t = e^{f_t} S_{t-1} + e^{i_t} v_t k_tᵀ, z_t = e^{f_t} z_{t-1} + e^{i_t} k_t ;  o_t = S_t q_t / max(1, |z_tᵀ q_t|)"
)
def mlstm_spec(S: State[Value, Key], z: State[Key], q: Key, k: Key, v: Value, i: Scalar, f: Scalar.log_gate):
    S = S * exp(f) + exp(i) * outer(v, k)
    z = z * exp(f) + exp(i) * k
    return (S @ q) / maximum(1, abs_(dot(z, q))), S, z


def mlstm(
    q,
    k,
    v,
    i,
    f,
    *,
    scale=None,
    initial_state=None,
    output_final_state=False,
    strategy="auto",
    cu_seqlens=None,
):
    """mLSTM with log input gate ``i`` and log forget gate ``f`` (both ``[B,T,H]``); state ``(S, z)``."""
    return apply(mlstm_spec, locals())
