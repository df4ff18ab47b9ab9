"""Test utilities shared by the test-suite, the benchmarks and the autotuner.

One tolerance table, random inputs that are never zeros, poisoned buffers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scandsl._core import CoreInputs, CoreSig, Decay, Readout, Transition

__all__ = [
    "TOLERANCES",
    "TAXONOMY_SIGS",
    "rel_err",
    "assert_close",
    "random_core_inputs",
    "poison_",
]

# (outputs/states, gradients) relative L2 error bounds, per compute dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (2e-4, 2e-3),
    torch.bfloat16: (1e-2, 2e-2),
    torch.float16: (5e-3, 1e-2),
}

# Every core signature the fifteen taxonomy rows classify into.
TAXONOMY_SIGS: dict[str, CoreSig] = {
    "none": CoreSig(),
    "scalar": CoreSig(decay=Decay.SCALAR),
    "key": CoreSig(decay=Decay.KEY),
    "key_before": CoreSig(decay=Decay.KEY, readout=Readout.BEFORE),
    "value": CoreSig(decay=Decay.VALUE),
    "outer": CoreSig(decay=Decay.OUTER),
    "delta": CoreSig(transition=Transition.DELTA),
    "scalar_delta": CoreSig(decay=Decay.SCALAR, transition=Transition.DELTA),
    "channel": CoreSig(decay=Decay.CHANNEL),
    "channel_static": CoreSig(decay=Decay.CHANNEL, key_static=True, query_static=True, decay_static=True),
}


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """‖got − ref‖ / ‖ref‖ in float64; NaN anywhere gives inf."""
    got64, ref64 = got.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(got64).all():
        return float("inf")
    denom = ref64.norm().item()
    return (got64 - ref64).norm().item() / max(denom, 1e-30)


def assert_close(got: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    if got.shape != ref.shape:
        raise AssertionError(f"{what}: shape {tuple(got.shape)} != reference {tuple(ref.shape)}")
    err = rel_err(got, ref)
    if not err <= tol:
        raise AssertionError(f"{what}: relative error {err:.3e} > {tol:.1e}")


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN (floats) so any element a kernel fails to write shows up."""
    return t.fill_(float("nan"))


def random_core_inputs(
    sig: CoreSig,
    *,
    B: int = 2,
    T: int = 37,
    H: int = 2,
    K: int = 24,
    V: int = 40,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    cu_seqlens: torch.Tensor | None = None,
    with_state: bool = True,
    requires_grad: bool = False,
) -> CoreInputs:
    """Fresh random, well-conditioned inputs for one core signature (never zeros)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    if cu_seqlens is not None:
        B = 1
    n_seq = B if cu_seqlens is None else len(cu_seqlens) - 1
    x: dict[str, torch.Tensor | None] = {}
    if sig.query_static:
        x["q"] = rnd(H, V, K)
    else:
        x["q"] = rnd(B, T, H, K)
    if sig.key_static:
        x["k"] = rnd(H, V, K, scale=0.5)
    elif sig.transition is Transition.DELTA:
        x["k"] = F.normalize(rnd(B, T, H, K), dim=-1)
    else:
        x["k"] = rnd(B, T, H, K, scale=K**-0.5)
    x["v"] = rnd(B, T, H, V)
    if "g" in sig.uses:
        x["g"] = F.logsigmoid(rnd(B, T, H) + 3.0)
    if "gk" in sig.uses:
        x["gk"] = F.logsigmoid(rnd(B, T, H, K) + 3.0)
    if "gv" in sig.uses:
        if sig.decay is Decay.CHANNEL:
            shape = (H, V) if sig.decay_static else (B, T, H, V)
            x["gv"] = -F.softplus(rnd(*shape) - 1.0)
        else:
            x["gv"] = F.logsigmoid(rnd(B, T, H, V) + 3.0)
    if "A" in sig.uses:
        x["A"] = torch.exp(rnd(H, V, K, scale=0.5))
    if "beta" in sig.uses:
        x["beta"] = torch.sigmoid(rnd(B, T, H))
    state = rnd(n_seq, H, K, V, scale=0.5) if with_state else None

    def finish(t: torch.Tensor | None, dt: torch.dtype) -> torch.Tensor | None:
        if t is None:
            return None
        t = t.to(device=device, dtype=dt)
        return t.requires_grad_(requires_grad)

    gate_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def need(t: torch.Tensor | None) -> torch.Tensor:
        assert t is not None
        return t

    return CoreInputs(
        q=need(finish(x["q"], dtype)),
        k=need(finish(x["k"], dtype)),
        v=need(finish(x["v"], dtype)),
        g=finish(x.get("g"), gate_dtype),
        gk=finish(x.get("gk"), gate_dtype),
        gv=finish(x.get("gv"), gate_dtype),
        A=finish(x.get("A"), gate_dtype),
        beta=finish(x.get("beta"), gate_dtype),
        scale=K**-0.5,
        initial_state=finish(state, gate_dtype),
        output_final_state=True,
        cu_seqlens=None if cu_seqlens is None else cu_seqlens.to(device),
    )


def random_spec_inputs(
    spec,
    *,
    B: int = 1,
    T: int = 19,
    H: int = 2,
    sizes: dict[str, int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Well-conditioned random inputs for any spec, from its declarations (never zeros).

    Gates are log-sigmoids near 0, ``beta``-like scalars lie in (0, 1), keys of delta-rule
    specs are L2-normalised, and normalised specs get positive q/k so zᵀq stays away from 0.
    """
    from scandsl._core import Transition

    sizes = {"K": 12, "V": 20, "M": 6} | (sizes or {})
    gen = torch.Generator().manual_seed(seed)
    stages = spec.normal_form.stages
    delta = any(s.sig.transition is Transition.DELTA for s in stages)
    normalised = any(len(s.values) > 1 for s in stages)
    out = {}
    for name, d in spec.inputs:
        shape = ((B, T, H) if d.time else (H,)) + tuple(sizes[a] for a in d.axes)
        x = torch.randn(*shape, generator=gen, dtype=torch.float64)
        if d.is_log_gate:
            x = F.logsigmoid(x + 2.5)
        elif d.is_positive:
            x = torch.rand(*shape, generator=gen, dtype=torch.float64) * 0.5 + 0.05
        elif d.is_nonneg:
            x = torch.rand(*shape, generator=gen, dtype=torch.float64)
        elif name == "beta" or (not d.axes and name not in ("i",)):
            x = torch.sigmoid(x)
        elif name in ("q", "k") and normalised:
            x = x.abs() + 0.5
        elif name == "k" and delta:
            x = F.normalize(x, dim=-1)
        elif name == "k":
            x = x * shape[-1] ** -0.5
        out[name] = x.to(device=device, dtype=dtype)
    return out
