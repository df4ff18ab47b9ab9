"""Gated slot attention (Zhang et al. 2024): ABC with a per-slot forget gate."""

from scandsl import Key, Slot, State, Value, exp, outer, recurrence, softmax
from scandsl._entry import apply


@recurrence(
    formula="S^k_t = S^k_{t-1} Diag(e^{g_t}) + k_t φ_tᵀ, S^v_t = S^v_{t-1} Diag(e^{g_t}) + v_t φ_tᵀ ;  o_t = S^v_t softmax((S^k_t)ᵀ q_t)"
)
def gsa_spec(
    Sk: State[Slot, Key], Sv: State[Value, Slot], q: Key, k: Key, v: Value, phi: Slot.nonneg, g: Slot.log_gate
):
    # Sk is written transposed, (S^k)ᵀ, so its slot decay sits on its value axis
    Sk = Sk * exp(g) + outer(phi, k)
    Sv = Sv * exp(g) + outer(v, phi)
    return Sv @ softmax(Sk @ q), Sk, Sv


def gsa(
    q,
    k,
    v,
    phi,
    g,
    *,
    scale=None,
    initial_state=None,
    output_final_state=False,
    strategy="auto",
    cu_seqlens=None,
):
    """GSA with M slots (``phi`` >= 0 and log-decay ``g`` ``[B,T,H,M]``); state ``(S^k [B,H,K,M], S^v [B,H,M,V])``."""
    return apply(gsa_spec, locals())
