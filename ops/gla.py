"""Gated linear attention (Yang et al. 2023): a per-key data-dependent decay."""

from scandsl import Key, State, Value, exp, outer, recurrence
from scandsl._entry import apply


@recurrence(formula="S_t = S_{t-1} Diag(e^{gk_t}) + v_t k_tᵀ ;  o_t = S_t q_t")
def gla_spec(S: State[Value, Key], q: Key, k: Key, v: Value, gk: Key.log_gate):
    S = S * exp(gk) + outer(v, k)
    return S @ q, S


def gla(
    q, k, v, gk, *, scale=None, initial_state=None, output_final_state=False, strategy="auto", cu_seqlens=None
):
    """GLA with per-key log-decay ``gk`` ``[B,T,H,K]``."""
    return apply(gla_spec, locals())
