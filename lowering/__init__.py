"""Lowering: core recurrences -> Triton kernels, one module per strategy.

A strategy is registered here under its public name. Each one exposes

- ``supports(sig: CoreSig) -> str | None`` — ``None`` when it can run that signature,
  otherwise a one-line reason (shown to users asking for an illegal strategy);
- ``run(sig: CoreSig, x: CoreInputs, config: dict | None) -> (o, final_state)`` —
  differentiable through ``torch.autograd`` for every tensor in ``x``;
- ``search_space(sig, shape) -> autotune.SearchSpace`` — typed tile parameters with a
  validity predicate, consumed by ``scandsl.autotune``;
- ``default_config(sig, shape) -> dict`` — the heuristic used when nothing is tuned.

Strategies are imported lazily so a missing optional module never breaks the others.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

__all__ = ["KERNEL_STRATEGIES", "load_strategy"]

# public name -> module under scandsl.lowering
KERNEL_STRATEGIES: dict[str, str] = {
    "sequential": "scandsl.lowering.sequential",
    "scan": "scandsl.lowering.scan",
    "chunk": "scandsl.lowering.chunk",
}


@functools.cache
def load_strategy(name: str) -> ModuleType | None:
    """The strategy module, or None when it is not built (yet) in this install (memoised: every
    op call asks)."""
    try:
        return importlib.import_module(KERNEL_STRATEGIES[name])
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("scandsl.lowering"):
            return None
        raise
