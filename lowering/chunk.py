"""Chunkwise (SSD / FLA-style) strategy: a dispatcher over its stage families.

How it is parallelised: time is split into chunks of ``C`` steps; inside a chunk the
recurrence is a masked, decay-weighted attention-like product on tensor cores; across
chunks a short sequential pass carries the ``[K, V]`` state (Mamba-2's SSD; Yang et al.,
"Gated Linear Attention Transformers with Hardware-Efficient Training"; the delta rule via
the WY/UT representation, Yang et al. 2024).

Families, one module each:
- ``chunk_scalar``: decay NONE or SCALAR (linear attention, retention, Mamba-2, mLSTM, ...)
- ``chunk_vector``: decay KEY, VALUE or OUTER (GLA, RWKV-6, HGRN-2, GSA, DFW)
- ``chunk_delta``: the delta-rule transition (DeltaNet, Gated DeltaNet)
Each exposes ``supports``, ``run``, ``search_space`` and ``default_config``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from scandsl._core import CoreInputs, CoreSig, Decay, Shape, Transition

__all__ = ["supports", "run", "search_space", "default_config", "generate_source"]


def _family_name(sig: CoreSig) -> str | None:
    if sig.decay is Decay.CHANNEL:
        return None
    if sig.transition is Transition.DELTA:
        return "chunk_delta"
    if sig.decay in (Decay.NONE, Decay.SCALAR):
        return "chunk_scalar"
    return "chunk_vector"


def _family(sig: CoreSig) -> ModuleType | None:
    name = _family_name(sig)
    if name is None:
        return None
    try:
        return importlib.import_module(f"scandsl.lowering.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"scandsl.lowering.{name}":
            return None
        raise


def supports(sig: CoreSig) -> str | None:
    if sig.decay is Decay.CHANNEL:
        return "a per-element (channel) decay does not factor along K and V, so it has no chunked form"
    fam = _family(sig)
    if fam is None:
        return f"the chunked kernels for {sig.describe()} are not built yet"
    return fam.supports(sig)


def run(sig: CoreSig, x: CoreInputs, config: dict | None = None):
    fam = _family(sig)
    if fam is None:
        raise NotImplementedError(supports(sig))
    if getattr(fam, "WIDENS_MIXED_OPERANDS", False) and x.keep_wide:
        return fam.run(sig, x, config)  # the family unifies q, k, v itself, in the widest
    return fam.run(sig, _same_operand_dtype(x), config)


def _same_operand_dtype(x: CoreInputs) -> CoreInputs:
    """q, k, v in one dtype: tensor-core products take both operands in the same type.

    A spec's derived operand mixes dtypes as models keep them — hgrn2's key ``1 − e^g`` is
    float32 when the gate is, while q stays bfloat16. The products run in the narrowest of the
    three (what the user's features are in), accumulating in float32 as always; the output keeps
    the dtype it would have had, and gradients flow back through the cast in each operand's own
    dtype. A family with ``WIDENS_MIXED_OPERANDS`` (chunk_scalar) gets them unconverted when
    ``x.keep_wide`` says the spec's output branches on a read-out: narrowing mLSTM's value
    ``e^i [v, 1]`` to bfloat16 put its gradients 6x outside the bf16 band
    (``chunk_scalar._widen_mixed``), while gated_rfa's plain division is accurate narrowed and
    2.7x faster (H100: 1.32 / 8.60 ms fwd / fwd+bwd narrowed, 3.50 / 12.52 widened).
    """
    dtypes = {t.dtype for t in (x.q, x.k, x.v)}
    if len(dtypes) == 1:
        return x
    return x.operands_in(min(dtypes, key=lambda d: (d.itemsize, d != torch.bfloat16)))


def search_space(sig: CoreSig, shape):
    return _family(sig).search_space(sig, shape)


def default_config(sig: CoreSig, shape) -> dict:
    return _family(sig).default_config(sig, shape)


def generate_source(sig: CoreSig, config: dict | None = None) -> str:
    """The generated Triton module of the family that runs ``sig`` (default tiles at K=V=128)."""
    fam = _family(sig)
    if fam is None:
        raise NotImplementedError(supports(sig))
    cfg = config if config is not None else fam.default_config(sig, Shape(1, 4096, 1, 128, 128))
    return fam.generate_source(sig, cfg)


def value_gates(sig: CoreSig) -> tuple[str, ...]:
    """The kinds of value gate (``CoreInputs.vg``, scandsl._core) the family for ``sig`` multiplies
    in its kernels; the entry hands the others the product."""
    fam = _family(sig)
    return fam.value_gates(sig) if fam is not None and hasattr(fam, "value_gates") else ()
