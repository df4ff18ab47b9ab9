"""Linear attention (Katharopoulos et al. 2020): S_t = S_{t-1} + v_t φ(k_t)ᵀ, o_t = S_t φ(q_t)."""

from scandsl import Key, State, Value, dot, outer, phi, recurrence
from scandsl._entry import apply


@recurrence(formula="S_t = S_{t-1} + v_t φ(k_t)ᵀ ;  o_t = S_t φ(q_t)")
def linear_attn_spec(S: State[Value, Key], q: Key, k: Key, v: Value):
    S = S + outer(v, phi(k))
    return S @ phi(q), S


@recurrence(
    name="linear_attn_normalized",
    formula="S_t = S_{t-1} + v_t φ(k_t)ᵀ, z_t = z_{t-1} + φ(k_t) ;  o_t = S_t φ(q_t) / (z_tᵀ φ(q_t))",
)
def linear_attn_normalized_spec(S: State[Value, Key], z: State[Key], q: Key, k: Key, v: Value):
    S = S + outer(v, phi(k))
    z = z + phi(k)
    return (S @ phi(q)) / dot(z, phi(q)), S, z


def linear_attn(
    q,
    k,
    v,
    feature_map=None,
    normalize=False,
    *,
    scale=None,
    initial_state=None,
    output_final_state=False,
    strategy="auto",
    cu_seqlens=None,
):
    """Linear attention; ``normalize=True`` adds the normaliser ``z`` (state: ``(S, z)``)."""
    args = dict(locals())
    spec = linear_attn_normalized_spec if args.pop("normalize") else linear_attn_spec
    return apply(spec, args)
