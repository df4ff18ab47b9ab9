"""RetNet's retention (Sun et al. 2023): a constant per-head decay."""

import functools
import math

import torch

from scandsl import Key, Param, State, Value, exp, outer, recurrence
from scandsl._entry import apply


@recurrence(formula="S_t = γ S_{t-1} + v_t k_tᵀ ;  o_t = S_t q_t")
def retention_spec(S: State[Value, Key], q: Key, k: Key, v: Value, gamma: Param().log_gate):
    S = S * exp(gamma) + outer(v, k)
    return S @ q, S


@functools.lru_cache(maxsize=64)
def _gamma(H: int, device: torch.device) -> torch.Tensor:
    # built on the host once per (H, device): a fresh host-to-device copy each call would be a
    # copy from pageable memory, which waits for the GPU's queue to drain
    return torch.tensor([math.log(1 - 2 ** (-5 - h)) for h in range(H)], dtype=torch.float32, device=device)


def retnet_gamma(H: int, device=None) -> torch.Tensor:
    """RetNet's per-head log-decays ``log(1 − 2^{−5−h})`` (a new tensor; the cached one is never handed out)."""
    return _gamma(H, torch.device(device or "cpu")).clone()


def retention(
    q,
    k,
    v,
    gamma=None,
    *,
    scale=None,
    initial_state=None,
    output_final_state=False,
    strategy="auto",
    cu_seqlens=None,
):
    """Retention; ``gamma`` ``[H]`` log-decay, ``None`` = RetNet's ``log(1 − 2^{−5−h})``."""
    if gamma is None and isinstance(q, torch.Tensor) and q.dim() == 4:
        gamma = _gamma(q.shape[2], q.device)  # read-only use: the op never writes its inputs
        gamma = gamma.double() if q.dtype == torch.float64 else gamma
    return apply(retention_spec, locals())
