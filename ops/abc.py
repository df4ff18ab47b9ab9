"""ABC: attention with bounded-memory control (Peng et al. 2022): two recurrences around a softmax."""

from scandsl import Key, Slot, State, Value, outer, recurrence, softmax
from scandsl._entry import apply


@recurrence(
    formula="S^k_t = S^k_{t-1} + k_t φ_tᵀ, S^v_t = S^v_{t-1} + v_t φ_tᵀ ;  o_t = S^v_t softmax((S^k_t)ᵀ q_t)"
)
def abc_spec(Sk: State[Slot, Key], Sv: State[Value, Slot], q: Key, k: Key, v: Value, phi: Slot.nonneg):
    # Sk is written transposed, (S^k)ᵀ = Σ φ kᵀ, so that its read-out is an ordinary S q
    Sk = Sk + outer(phi, k)
    Sv = Sv + outer(v, phi)
    return Sv @ softmax(Sk @ q), Sk, Sv


def abc(
    q,
    k,
    v,
    phi,
    *,
    scale=None,
    initial_state=None,
    output_final_state=False,
    strategy="auto",
    cu_seqlens=None,
):
    """ABC with M memory slots (``phi`` ``[B,T,H,M]`` >= 0); state ``(S^k [B,H,K,M], S^v [B,H,M,V])``."""
    return apply(abc_spec, locals())
