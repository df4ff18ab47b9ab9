"""Anchors: other libraries' kernels for the same functions, timed beside ours.

- flash-linear-attention (``fla.ops``, 0.6.0): same ``[B, T, H, D]`` layout, ``scale``
  on ``q``, states ``[N, H, K, V]`` — our inputs pass through unchanged, except keyword names
  (``g`` for GLA's per-key gate, ``r``/``w`` for RWKV-6) and ``normalize=False`` for
  linear attention (FLA's default divides by ``z·q``).
- mamba_ssm's Triton SSD (``mamba_chunk_scan_combined``) and decode step
  (``selective_state_update``), loaded from the sdist's files under a stub package
  (``.anchors/mamba_stub``, see bench/README.md). Mamba writes the scalar-decay recurrence as
  ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_tᵀ``, ``y_t = C_t h_t`` with ``x [B,T,H,P]``,
  ``dt [B,T,H]``, ``A [H]``, ``B, C [B,T,G,N]``. Our ``mamba2(q, k, v, g)`` maps to it
  exactly with ``A = −1``, ``dt = −g``, ``x = v / dt``, ``B = k``, ``C = scale·q``, ``G = H``
  (Mamba-2 models share B and C over heads, G = 1: cheaper, but another function).

Every anchor is checked against the same reference as ours before it is timed; one that
disagrees is reported as ``mismatch`` and not timed (a wrong mapping must not pass as a
comparison). One whose package is missing is reported ``absent``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["Anchor", "AnchorAbsent", "ANCHORS", "anchors_for", "use_mamba_stub", "MAMBA_STUB"]

MAMBA_STUB = Path(__file__).resolve().parent.parent / ".anchors" / "mamba_stub"


class AnchorAbsent(Exception):
    """The anchor's package is not importable here."""


@dataclass(frozen=True)
class Opts:
    scale: float
    initial_state: torch.Tensor | None  # ours: [B, H, K, V] float32
    output_final_state: bool
    requires_grad: bool


# prepare(inputs, opts) -> (fn() -> (o, final_state in our layout or None), grad leaves)
Prepare = Callable[[dict[str, torch.Tensor], Opts], tuple[Callable[[], tuple], list[torch.Tensor]]]


@dataclass(frozen=True)
class Anchor:
    name: str  # "fla.chunk_gla"
    op: str  # our op it computes
    kind: str  # "chunk" | "recurrent" | "decode" | "scan": which comparison it anchors
    prepare: Prepare


def use_mamba_stub(path: Path | None = None) -> None:
    """Put the stub package first on ``sys.path`` (idempotent)."""
    p = str(path or MAMBA_STUB)
    if Path(p).is_dir() and p not in sys.path:
        sys.path.insert(0, p)


def _import(module: str, attr: str):
    if module.startswith("mamba_ssm"):
        use_mamba_stub()
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as err:
        if not module.startswith("fla.") or (err.name or "").split(".")[0] == "fla":
            raise AnchorAbsent(f"{module}.{attr} not importable ({err})") from err
        first = err
    except Exception as err:  # fla's __init__ also imports its layers/models (transformers...)
        if not module.startswith("fla."):
            raise AnchorAbsent(f"{module}.{attr} not importable ({type(err).__name__}: {err})") from err
        first = err
    # the kernels need none of fla's model code: retry under a bare package, as for mamba_ssm
    try:
        _bare_package("fla")
        return getattr(importlib.import_module(module), attr)
    except Exception as err:
        raise AnchorAbsent(f"{module}.{attr} not importable ({first}; bare package: {err})") from err


def _bare_package(name: str) -> None:
    """Register ``name`` as a package whose ``__init__`` is not run (sub-modules still import)."""
    import importlib.util
    import types

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(name)
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    pkg = types.ModuleType(name)
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    sys.modules[name] = pkg


def _leaf(t: torch.Tensor, grad: bool) -> torch.Tensor:
    return t.detach().clone().requires_grad_(grad and t.is_floating_point())


def _fla(module: str, attr: str, names: dict[str, str], *, like_q: tuple[str, ...] = (), **extra) -> Prepare:
    """An FLA op taking our inputs under (possibly) other keyword names; ``like_q`` inputs are
    cast to q's dtype (FLA's tests pass per-head parameters such as RWKV-6's ``u`` that way)."""

    def prepare(x, o: Opts):
        fn = _import(module, attr)
        args = {
            theirs: _leaf(x[ours].to(x["q"].dtype) if ours in like_q else x[ours], o.requires_grad)
            for ours, theirs in names.items()
        }
        init = None if o.initial_state is None else o.initial_state.contiguous()
        leaves = [t for t in args.values() if t.requires_grad]

        def run():
            return fn(
                **args, scale=o.scale, initial_state=init, output_final_state=o.output_final_state, **extra
            )

        return run, leaves

    return prepare


_QKV = {"q": "q", "k": "k", "v": "v"}


def _mamba_chunk(x, o: Opts):
    """``mamba_chunk_scan_combined`` on our mamba2 inputs (see the module docstring)."""
    fn = _import("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined")
    q, k, v, g = x["q"], x["k"], x["v"], x["g"]
    dt = (-g.float()).clamp_min(1e-6)  # [B,T,H] > 0
    xs = (v.float() / dt[..., None]).to(v.dtype)
    A = -torch.ones(g.shape[2], device=g.device, dtype=torch.float32)
    C = (q.float() * o.scale).to(q.dtype)
    grad = o.requires_grad
    xs, dt, A, Bm, C = (_leaf(t, grad) for t in (xs, dt, A, k, C))
    init = None if o.initial_state is None else o.initial_state.transpose(-1, -2).contiguous()  # [B,H,P,N]

    def run():
        out = fn(xs, dt, A, Bm, C, 64, initial_states=init, return_final_states=o.output_final_state)
        if o.output_final_state:
            y, final = out
            return y, final.transpose(-1, -2)
        return out, None

    return run, [t for t in (xs, dt, A, Bm, C) if t.requires_grad]


def _mamba_step(per_channel: bool):
    """``selective_state_update``: one decoding step, state updated in place (Mamba's own habit)."""

    def prepare(x, o: Opts):
        fn = _import("mamba_ssm.ops.triton.selective_state_update", "selective_state_update")
        if o.initial_state is None or x["v"].shape[1] != 1:
            raise ValueError("the decode anchor needs T == 1 and an initial state")
        q, k, v = x["q"][:, 0], x["k"][:, 0], x["v"][:, 0]  # [B,H,N], [B,H,N], [B,H,P]
        B_, H, P = v.shape
        N = k.shape[-1]
        C = (q.float() * o.scale).to(q.dtype)
        state = o.initial_state.transpose(-1, -2).contiguous()  # [B,H,P,N] float32
        if per_channel:  # mamba: A [H,P,N] = −exp(A_log), dt [B,H,P], D [H,P]
            A = -torch.exp(x["A_log"].float())
            dt = x["dt"][:, 0].float()
            xs, D, bias = v, x.get("D"), None
        else:  # mamba2 with A = −1 and dt = −g, tied over P and N (Mamba-2's decode path)
            g = x["g"][:, 0].float()  # [B,H]
            dt_h = (-g).clamp_min(1e-6)
            xs = (v.float() / dt_h[..., None]).to(v.dtype)
            dt = dt_h[..., None].expand(B_, H, P)
            A = torch.full((H, 1, 1), -1.0, device=v.device).expand(H, P, N)
            bias = torch.zeros(H, 1, device=v.device).expand(H, P)
            D = None

        # mamba_ssm 2.3.2 unpacks D's and dt_bias's strides unconditionally (``*(...) if D is not
        # None else 0`` raises for None), so absent ones are passed as zeros: the same step
        zeros = torch.zeros(H, P, device=v.device)
        D = zeros if D is None else D
        bias = zeros if bias is None else bias

        def run():
            y = fn(state, xs, dt, A, k, C, D=D, dt_bias=bias)
            return y[:, None], (state.transpose(-1, -2) if o.output_final_state else None)

        return run, []

    return prepare


def _selective_scan_cuda(x, o: Opts):
    raise AnchorAbsent(
        "mamba_ssm's selective_scan_cuda is a CUDA extension; the sdist is loaded without building it "
        "(design.md quotes 0.565 ms fwd / 3.11 ms fwd+bwd for this shape on an H100)"
    )


ANCHORS: tuple[Anchor, ...] = (
    Anchor("fla.chunk_linear_attn", "linear_attn", "chunk",
           _fla("fla.ops.linear_attn", "chunk_linear_attn", _QKV, normalize=False)),
    Anchor("fla.chunk_retention", "retention", "chunk", _fla("fla.ops.retention", "chunk_retention", _QKV)),
    Anchor("fla.chunk_simple_gla", "mamba2", "chunk",
           _fla("fla.ops.simple_gla", "chunk_simple_gla", {**_QKV, "g": "g"})),
    Anchor("mamba_ssm.mamba_chunk_scan_combined", "mamba2", "chunk", _mamba_chunk),
    Anchor("fla.chunk_gla", "gla", "chunk", _fla("fla.ops.gla", "chunk_gla", {**_QKV, "gk": "g"})),
    Anchor("fla.chunk_rwkv6", "rwkv6", "chunk",
           _fla("fla.ops.rwkv6", "chunk_rwkv6", {"q": "r", "k": "k", "v": "v", "gk": "w", "u": "u"}, like_q=("u",))),
    Anchor("fla.chunk_delta_rule", "deltanet", "chunk",
           _fla("fla.ops.delta_rule", "chunk_delta_rule", {**_QKV, "beta": "beta"})),
    Anchor("fla.chunk_gated_delta_rule", "gated_deltanet", "chunk",
           _fla("fla.ops.gated_delta_rule", "chunk_gated_delta_rule", {**_QKV, "g": "g", "beta": "beta"})),
    Anchor("fla.fused_recurrent_simple_gla", "mamba2", "recurrent",
           _fla("fla.ops.simple_gla", "fused_recurrent_simple_gla", {**_QKV, "g": "g"})),
    Anchor("fla.fused_recurrent_gla", "gla", "recurrent",
           _fla("fla.ops.gla", "fused_recurrent_gla", {**_QKV, "gk": "gk"})),
    Anchor("fla.fused_recurrent_simple_gla", "mamba2", "decode",
           _fla("fla.ops.simple_gla", "fused_recurrent_simple_gla", {**_QKV, "g": "g"})),
    Anchor("mamba_ssm.selective_state_update", "mamba2", "decode", _mamba_step(per_channel=False)),
    Anchor("mamba_ssm.selective_state_update", "mamba", "decode", _mamba_step(per_channel=True)),
    Anchor("mamba_ssm.selective_scan_cuda", "mamba", "scan", _selective_scan_cuda),
)  # fmt: skip


def anchors_for(op: str, kind: str) -> list[Anchor]:
    return [a for a in ANCHORS if a.op == op and a.kind == kind]


def anchor_versions() -> dict[str, Any]:
    """Versions of the anchor packages importable here (for the results' header)."""
    out: dict[str, Any] = {}
    try:
        import fla

        out["fla"] = getattr(fla, "__version__", "unknown")
    except Exception as err:  # a broken install is reported beside the results, never fatal
        out["fla"] = f"absent ({type(err).__name__}: {err})"[:200]
    use_mamba_stub()
    out["mamba_ssm"] = "2.3.2.post1 (Triton files, stub package)" if MAMBA_STUB.is_dir() else "absent"
    return out
