"""The kernel-level normal form: one linear recurrence with fixed tensor roles.

Every spec is classified into a small DAG of *core recurrences* (usually one) plus
elementwise prologue / epilogue expressions evaluated in PyTorch (the forward's epilogue
fused into one generated kernel when no gradient is needed).  Each lowering
strategy implements exactly this contract, forward and backward, and nothing
model-specific.  Per (batch, head), with the state ``S`` in math orientation
``[V, K]`` (it crosses the API transposed, as ``[K, V]``)::

    S_t = Λ_t ⊙ S_{t-1} · T_t + U_t
    o_t = S_t q_t            (Readout.AFTER)
    o_t = S_{t-1} q_t        (Readout.BEFORE)

- ``Λ_t`` is kept in log space, by :class:`Decay`:
  ``NONE``; ``SCALAR`` ``g [B,T,H]``; ``KEY`` ``gk [B,T,H,K]``; ``VALUE`` ``gv [B,T,H,V]``;
  ``OUTER`` both ``gk`` and ``gv`` (``log Λ[v,k] = gv[v] + gk[k]``); ``CHANNEL``
  ``log Λ[v,k] = gv[v] * A[h,v,k]`` with ``A [H,V,K]`` time-invariant (Mamba / S4's
  ``−dt ⊗ e^{A_log}``), ``gv`` per step ``[B,T,H,V]`` or static ``[H,V]``.
- ``T_t`` is the identity, or for :class:`Transition.DELTA` ``I − β_t k_t k_t^T``
  (``beta [B,T,H]``), only with ``NONE`` / ``SCALAR`` decay.
- ``U_t = v_t k_t^T`` (any coefficients are folded into ``v`` and ``k`` by the prologue),
  or with ``key_static`` ``U_t[v,k] = v_t[v] · k[h,v,k]`` (S4's input matrix ``B``). A
  strategy whose ``value_gates(sig)`` names the kind also takes the value as two factors,
  ``v_t ⊙ vg_t`` with ``vg [B,T,H,V]`` ("vector", Mamba's ``dt ⊙ x``) or ``[B,T,H]``
  ("scalar", DeltaNet's ``β_t v_t``), multiplied in its kernels; the others get the product.
- With ``query_static`` the read-out is ``o_t[v] = Σ_k S_t[v,k] q[h,v,k]`` (S4's ``C``).
- A strategy whose ``takes_skip(sig)`` holds also takes a skip term: with ``D [H,V]`` the
  output is ``o_t + D ⊙ v_t``, ``v`` the value's first factor (the value itself when it has no
  gate), computed in its read-out (Mamba's and S4's ``D ⊙ x``; the entry swaps the factors
  when ``x`` is the gate).
- ``scale`` multiplies ``q`` inside the kernel.

Varlen: with ``cu_seqlens`` (``[N+1]``, ``B == 1``) each sequence starts from its own
``initial_state[n]`` (or zero) and returns its own final state.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

import torch

from scandsl._seqlens import host_bounds

__all__ = ["Decay", "Transition", "Readout", "CoreSig", "CoreInputs", "Shape", "core_reference"]


class Decay(enum.Enum):
    NONE = "none"
    SCALAR = "scalar"
    KEY = "key"
    VALUE = "value"
    OUTER = "outer"
    CHANNEL = "channel"

    @property
    def factorable(self) -> bool:
        """Decays that factor along K and/or V, the condition for the chunked form."""
        return self is not Decay.CHANNEL


class Transition(enum.Enum):
    IDENTITY = "identity"
    DELTA = "delta"


class Readout(enum.Enum):
    AFTER = "after"
    BEFORE = "before"


@dataclass(frozen=True, slots=True)
class CoreSig:
    """What a generated kernel is specialised on (everything but sizes and tiles)."""

    decay: Decay = Decay.NONE
    transition: Transition = Transition.IDENTITY
    readout: Readout = Readout.AFTER
    key_static: bool = False
    query_static: bool = False
    decay_static: bool = False

    def __post_init__(self) -> None:
        if self.transition is Transition.DELTA and self.decay not in (Decay.NONE, Decay.SCALAR):
            raise ValueError(
                f"CoreSig.decay: a delta-rule transition takes decay NONE or SCALAR, got {self.decay.name}"
            )
        statics = self.key_static or self.query_static or self.decay_static
        if statics and self.decay is not Decay.CHANNEL:
            raise ValueError(
                "CoreSig: key_static / query_static / decay_static are per-channel (CHANNEL decay) "
                f"forms; got decay {self.decay.name}"
            )

    @property
    def uses(self) -> frozenset[str]:
        """Names of the optional CoreInputs tensors this signature reads."""
        need = set()
        if self.decay is Decay.SCALAR:
            need.add("g")
        if self.decay in (Decay.KEY, Decay.OUTER):
            need.add("gk")
        if self.decay in (Decay.VALUE, Decay.OUTER, Decay.CHANNEL):
            need.add("gv")
        if self.decay is Decay.CHANNEL:
            need.add("A")
        if self.transition is Transition.DELTA:
            need.add("beta")
        return frozenset(need)

    def describe(self) -> str:
        bits = [
            f"decay={self.decay.value}",
            f"transition={self.transition.value}",
            f"readout={self.readout.value}",
        ]
        bits += [name for name in ("key_static", "query_static", "decay_static") if getattr(self, name)]
        return ", ".join(bits)


@dataclass(slots=True)
class CoreInputs:
    """Tensors of one core recurrence call. Shapes as in the module docstring.

    ``q``/``k`` are ``[B,T,H,K]`` (or ``[H,V,K]`` when static), ``v`` is ``[B,T,H,V]``.
    ``initial_state`` is ``[B or N, H, K, V]`` float32. ``o`` comes back in ``out_dtype``.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor | None = None
    gk: torch.Tensor | None = None
    gv: torch.Tensor | None = None
    A: torch.Tensor | None = None
    beta: torch.Tensor | None = None
    vg: torch.Tensor | None = None  # value gate: the value is v ⊙ vg (see value_gates above)
    D: torch.Tensor | None = None  # skip term: the output adds D ⊙ v, D [H, V] (see takes_skip above)
    # q, k, v of mixed dtypes stay in the widest on tensor cores (else the narrowest): the spec's
    # output branches on a read-out (Spec.branches_on_readout), which amplifies their rounding
    keep_wide: bool = False
    scale: float = 1.0
    initial_state: torch.Tensor | None = None
    output_final_state: bool = False
    cu_seqlens: torch.Tensor | None = None
    out_dtype: torch.dtype | None = None

    @property
    def B(self) -> int:
        return self.v.shape[0]

    @property
    def T(self) -> int:
        return self.v.shape[1]

    @property
    def H(self) -> int:
        return self.v.shape[2]

    @property
    def V(self) -> int:
        return self.v.shape[3]

    @property
    def K(self) -> int:
        return self.q.shape[-1]

    def value(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The value the recurrence adds, ``v ⊙ vg`` (``v`` when there is no gate), in ``dtype`` if
        given: what a strategy without value gates gets, and what the reference reads."""
        v = self.v if dtype is None else self.v.to(dtype)
        if self.vg is None:
            return v
        vg = self.vg if dtype is None else self.vg.to(dtype)
        return v * (vg if vg.dim() == v.dim() else vg.unsqueeze(-1))

    def operands_in(self, dtype: torch.dtype) -> CoreInputs:
        """These inputs with q, k, v cast to ``dtype`` for the tensor cores (gradients flow back
        through the cast); the output keeps the dtype it would have had."""
        return replace(
            self,
            q=self.q.to(dtype),
            k=self.k.to(dtype),
            v=self.v.to(dtype),
            out_dtype=self.out_dtype or self.v.dtype,
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }


def _log_decay(sig: CoreSig, x: CoreInputs, b: int, t: int) -> torch.Tensor | None:
    """log Λ_t for batch row ``b``, step ``t``: ``[H, V, K]`` (broadcastable), or None."""
    d = sig.decay
    if d is Decay.NONE:
        return None
    if d is Decay.SCALAR:
        return _need(x.g, "g")[b, t][:, None, None]
    if d is Decay.KEY:
        return _need(x.gk, "gk")[b, t][:, None, :]
    gv = _need(x.gv, "gv")
    if d is Decay.VALUE:
        return gv[b, t][:, :, None]
    if d is Decay.OUTER:
        return gv[b, t][:, :, None] + _need(x.gk, "gk")[b, t][:, None, :]
    gv_t = gv if sig.decay_static else gv[b, t]
    return gv_t[:, :, None] * _need(x.A, "A")


def _need(t: torch.Tensor | None, name: str) -> torch.Tensor:
    if t is None:
        raise ValueError(f"CoreInputs.{name}: this signature needs it, got None")
    return t


def core_reference(sig: CoreSig, x: CoreInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The core recurrence as a literal PyTorch loop (autograd-capable, float64-capable).

    Kernels are tested against this at the core level; the spec-level reference
    (``scandsl.reference``) interprets the traced spec itself, independently.
    """
    cdt = torch.float64 if x.v.dtype == torch.float64 else torch.float32
    B, T, H, V, K = x.B, x.T, x.H, x.V, x.K
    bounds = _sequence_bounds(x.cu_seqlens, B, T)
    outs = torch.zeros(B, T, H, V, dtype=cdt, device=x.v.device)
    finals = []
    q_all = x.q.to(cdt) * x.scale
    k_all = x.k.to(cdt)
    v_all = x.value(cdt)
    rows = []
    for n, (b, start, end) in enumerate(bounds):
        if x.initial_state is not None:
            S = x.initial_state[n].to(cdt).transpose(-1, -2)  # [H, V, K]
        else:
            S = torch.zeros(H, V, K, dtype=cdt, device=x.v.device)
        seq_out = []
        for t in range(start, end):
            kt = k_all if sig.key_static else k_all[b, t]  # [H,V,K] or [H,K]
            qt = q_all if sig.query_static else q_all[b, t]
            vt = v_all[b, t]  # [H, V]
            prev = S
            ld = _log_decay(sig, x, b, t)
            if ld is not None:
                S = S * torch.exp(ld.to(cdt))
            if sig.transition is Transition.DELTA:
                beta = _need(x.beta, "beta")[b, t].to(cdt)[:, None]
                Sk = torch.einsum("hvk,hk->hv", S, kt)
                S = S - beta[:, :, None] * Sk[:, :, None] * kt[:, None, :]
            U = vt[:, :, None] * (kt if sig.key_static else kt[:, None, :])
            S = S + U
            read = prev if sig.readout is Readout.BEFORE else S
            if sig.query_static:
                seq_out.append((read * qt).sum(-1))
            else:
                seq_out.append(torch.einsum("hvk,hk->hv", read, qt))
        if seq_out:
            rows.append((b, start, end, torch.stack(seq_out, 0)))
        finals.append(S.transpose(-1, -2))
    if rows:
        outs = outs.index_put(tuple(_row_index(rows, x.v.device)), torch.cat([r[3] for r in rows], 0))
    if x.D is not None:
        outs = outs + x.D.to(cdt) * x.v.to(cdt)  # the skip term reads v alone, not v ⊙ vg
    out_dtype = x.out_dtype or x.v.dtype
    final = torch.stack(finals, 0).to(torch.float64 if cdt == torch.float64 else torch.float32)
    return outs.to(out_dtype), (final if x.output_final_state else None)


def _row_index(rows, device) -> tuple[torch.Tensor, torch.Tensor]:
    bs, ts = [], []
    for b, start, end, _ in rows:
        bs.append(torch.full((end - start,), b, dtype=torch.long))
        ts.append(torch.arange(start, end))
    return torch.cat(bs).to(device), torch.cat(ts).to(device)


def _sequence_bounds(cu_seqlens: torch.Tensor | None, B: int, T: int) -> list[tuple[int, int, int]]:
    """(batch row, start, end) per independent sequence."""
    if cu_seqlens is None:
        return [(b, 0, T) for b in range(B)]
    cu = host_bounds(cu_seqlens)
    return [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)]


class Shape(NamedTuple):
    """Problem size a kernel is tuned for (``K`` is ``N`` for per-channel rows)."""

    B: int
    T: int
    H: int
    K: int
    V: int
