"""The hot path: which strategy and config ``strategy="auto"`` runs.

``choose()`` answers from the tuning cache when it holds the key, otherwise from a
heuristic, and never tunes unless the knob ``SCANDSL_TUNE=1`` asks it to. Its answers
are memoised per argument tuple, so after the first call for a problem it costs one
dict lookup (about a microsecond; ``tests/autotune`` measures it).

The heuristic follows what each strategy is good at (docs/autotune.md):

- ``T`` small (decoding, short prompts): ``sequential`` — one launch, state in registers,
  nothing to amortise a chunked or scanned form over;
- per-channel (``CHANNEL``) decay, Mamba / S4: ``scan`` — the state per channel is small
  and the decay does not factor, so there is no chunked form;
- otherwise (matrix states, long ``T``): ``chunk`` > ``scan`` > ``sequential`` — the
  chunked form puts most of the work on tensor cores.

Only strategies that are legal for the spec *and* built in this install (their module
imports and ``supports(sig)`` is None) are candidates.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from types import ModuleType

import torch
from scandsl.lowering import load_strategy

from scandsl import knobs
from scandsl._core import CoreSig, Decay, Shape

from ._cache import cache_at
from ._key import _cuda_available, make_key

__all__ = ["choose", "heuristic", "usable_strategies", "SMALL_T", "DEFAULT_TUNE_TRIALS", "forget_choices"]

SMALL_T = 64  # at or below this many steps, the sequential kernel wins (one launch, no chunk set-up)
DEFAULT_TUNE_TRIALS = 40  # trials when SCANDSL_TUNE=1 tunes on a cache miss

Loader = Callable[[str], ModuleType | None]

_CACHE_KNOB = next(k for k in knobs.KNOBS if k.name == "SCANDSL_CACHE_DIR")
_MEMO: dict[tuple, tuple[str, dict | None]] = {}
_MEMO_LOCK = threading.Lock()
_USABLE: dict[tuple[str, CoreSig, Loader], bool] = {}


def forget_choices() -> None:
    """Drop memoised answers (after the cache changed in this process)."""
    with _MEMO_LOCK:
        _MEMO.clear()


def _usable(name: str, sig: CoreSig, loader: Loader) -> bool:
    # keyed by the loader object itself, held by the memo: a short-lived test loader's id()
    # could be reused by a later one, a held object cannot
    memo = (name, sig, loader)
    ok = _USABLE.get(memo)
    if ok is None:
        mod = loader(name)
        ok = mod is not None and mod.supports(sig) is None
        _USABLE[memo] = ok
    return ok


def usable_strategies(
    sig: CoreSig, legal: tuple[str, ...], loader: Loader = load_strategy
) -> tuple[str, ...]:
    """The legal strategies whose kernels are built and accept ``sig``, in ``legal`` order."""
    return tuple(s for s in legal if _usable(s, sig, loader))


def heuristic(sig: CoreSig, shape: Shape, legal: tuple[str, ...], loader: Loader = load_strategy) -> str:
    """The strategy used when nothing is tuned (see the module docstring)."""
    available = usable_strategies(sig, legal, loader)
    if not available:
        raise ValueError(
            f"no kernel strategy is available for {sig.describe()}: legal {list(legal)}, "
            "but none is built in this install; use strategy='reference'"
        )
    if shape.T <= SMALL_T and "sequential" in available:
        return "sequential"
    order = ("scan", "sequential", "chunk") if sig.decay is Decay.CHANNEL else ("chunk", "scan", "sequential")
    for name in order:
        if name in available:
            return name
    return available[0]


def choose(
    spec_key: str,
    sig: CoreSig,
    shape: Shape,
    dtype: torch.dtype,
    legal: tuple[str, ...],
    *,
    device: torch.device | str | int | None = None,
    loader: Loader = load_strategy,
) -> tuple[str, dict | None]:
    """``(strategy, config)`` for one core stage; ``config=None`` means the strategy's default.

    ``spec_key`` identifies the spec (a hash from the spec layer), ``sig`` the core stage,
    ``legal`` the strategies legal for it. ``device`` defaults to the current CUDA device.
    The returned config dict is shared: treat it as read-only.
    """
    # the raw knob string, not knobs.cache_dir(): building a Path costs more than the lookup
    cache_knob = _CACHE_KNOB.get()
    dev = device if device is not None else (torch.cuda.current_device() if _cuda_available() else "cpu")
    memo_key = (spec_key, sig, shape, dtype, legal, dev, cache_knob, id(loader))
    hit = _MEMO.get(memo_key)
    if hit is not None:
        return hit
    answer = _choose_uncached(spec_key, sig, shape, dtype, legal, dev, knobs.cache_dir(), loader)
    with _MEMO_LOCK:
        _MEMO[memo_key] = answer
    return answer


def _choose_uncached(spec_key, sig, shape, dtype, legal, dev, cache_dir, loader) -> tuple[str, dict | None]:
    key = str(make_key(spec_key, sig, shape, dtype, dev))
    entry = cache_at(cache_dir).get(key)
    if entry is not None and entry.strategy in legal and _usable(entry.strategy, sig, loader):
        return entry.strategy, entry.config
    if knobs.tune_on_miss():
        from ._tune import tune

        try:
            result = tune(
                spec_key, sig, shape, dtype, legal,
                make_inputs=None, trials=DEFAULT_TUNE_TRIALS, progress=False, loader=loader,
                device=None if isinstance(dev, str) and dev == "cpu" else dev,
            )  # fmt: skip
        except Exception as err:  # a failed tune must never break the op: fall back
            warnings.warn(f"scandsl: tuning {spec_key} failed ({err}); using the heuristic", stacklevel=3)
        else:
            if result.best is not None:
                return result.best.strategy, result.best.config
    return heuristic(sig, shape, legal, loader), None
