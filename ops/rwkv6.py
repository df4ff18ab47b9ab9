"""RWKV-6 (Peng et al. 2024): GLA's update, read before the update plus a bonus on the current token."""

from scandsl import Key, State, Value, exp, outer, recurrence
from scandsl._entry import apply


@recurrence(formula="S_t = S_{t-1} Diag(e^{gk_t}) + v_t k_tᵀ ;  o_t = (S_{t-1} + v_t (u ⊙ k_t)ᵀ) q_t")
def rwkv6_spec(S: State[Value, Key], q: Key, k: Key, v: Value, gk: Key.log_gate, u: Key.param):
    o = (S + outer(v, u * k)) @ q
    return o, S * exp(gk) + outer(v, k)


def rwkv6(
    q,
    k,
    v,
    gk,
    u,
    *,
    scale=None,
    initial_state=None,
    output_final_state=False,
    strategy="auto",
    cu_seqlens=None,
):
    """RWKV-6 with per-key log-decay ``gk`` and bonus ``u`` ``[H,K]``."""
    return apply(rwkv6_spec, locals())
