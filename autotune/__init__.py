"""Autotuning with Optuna (issue 7): strategy × tile search, checked against the reference.

- :func:`choose` — the hot path behind ``strategy="auto"``: cache hit, else a heuristic;
  microseconds after the first call; tunes on a miss only with ``SCANDSL_TUNE=1``.
- :func:`tune` — Optuna ask/tell over the legal strategies and their search spaces; every
  candidate is validated, checked against ``core_reference`` on a probe, then timed;
  the winner goes to the JSON cache, every trial to a file-locked Optuna journal.
- :func:`grid_search` — every valid config (the baseline); :func:`replay` re-runs a sampler
  on a recorded grid to compare samplers without a GPU.
- :func:`tune_main` / :func:`add_tune_subparser` — the ``scandsl tune`` command.

Optuna is imported only by the tuning functions, never by ``choose`` (docs/autotune.md).
"""

from __future__ import annotations

from typing import Any

from ._cache import CacheEntry, CacheWarning, TuneCache, cache_at
from ._choose import choose, forget_choices, heuristic, usable_strategies
from ._key import TuneKey, make_key, shape_bucket
from ._space import Param, SearchSpace

__all__ = [
    "Param",
    "SearchSpace",
    "choose",
    "heuristic",
    "usable_strategies",
    "forget_choices",
    "tune",
    "grid_search",
    "replay",
    "TuneResult",
    "TrialRecord",
    "DeviceFault",
    "TuneKey",
    "make_key",
    "shape_bucket",
    "CacheEntry",
    "CacheWarning",
    "TuneCache",
    "cache_at",
    "tune_main",
    "add_tune_subparser",
]

_LAZY = {
    "tune": "._tune",
    "grid_search": "._tune",
    "replay": "._tune",
    "TuneResult": "._tune",
    "TrialRecord": "._evaluate",
    "DeviceFault": "._evaluate",
    "tune_main": "._cli",
    "add_tune_subparser": "._cli",
}


def __getattr__(name: str) -> Any:
    # Importing optuna costs ~0.5 s; only the tuning entry points pay it.
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
