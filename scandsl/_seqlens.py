"""What a varlen call derives from ``cu_seqlens`` on the host, made once per tensor.

A packed batch needs its sequence bounds on the host — to check them, and to size the launch
grids of the chunked kernels — which costs a device-to-host copy and a device sync, and the
chunk maps built from them cost host-to-device copies. Training passes one ``cu_seqlens``
tensor to every layer of a step, forward and backward. Memoised per tensor object and its
version counter (which every in-place write bumps), the copies happen on the first call only;
later calls launch without waiting for the device. (Measured on the H100: with a sync at the
start of every call, gla's packed fwd+bwd at 64K tokens spent 37-50 ms against 37 ms of
kernels, the device idling while the host prepared the call; bench/gpu_profile.py.)

Entries die with their tensor (a weak reference). Only device tensors are memoised: reading a
CPU tensor costs no sync, and a CPU tensor can be written through a NumPy view, which the
version counter does not see. Tensors without a version counter (made under
``torch.inference_mode``) are not memoised either. (Writes through ``.data`` bypass the counter
too; a ``cu_seqlens`` changed that way must be a new tensor.)
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import torch

__all__ = ["host_bounds", "derived"]

R = TypeVar("R")
MEMOISE_CPU = False  # tests turn it on to exercise the memo without a GPU
# id(tensor) -> (weak reference, version, {what: value})
_MEMO: dict[int, tuple[weakref.ref, int, dict[Hashable, Any]]] = {}


def _version(cu: torch.Tensor) -> int | None:
    try:
        return cu._version
    except RuntimeError:  # inference tensors track no version
        return None


def _forget(memo: dict, key: int, _ref: weakref.ref) -> None:
    memo.pop(key, None)  # ``memo`` bound early: at interpreter exit the module global is None


def derived(cu: torch.Tensor, what: Hashable, make: Callable[[], R]) -> R:
    """``make()``, memoised for this tensor and its current contents under the key ``what``."""
    version = _version(cu) if cu.device.type != "cpu" or MEMOISE_CPU else None
    if version is None:
        return make()
    key = id(cu)
    entry = _MEMO.get(key)
    if entry is None or entry[0]() is not cu or entry[1] != version:
        entry = (weakref.ref(cu, functools.partial(_forget, _MEMO, key)), version, {})
        _MEMO[key] = entry
    values = entry[2]
    if what not in values:
        values[what] = make()
    return values[what]


def host_bounds(cu: torch.Tensor) -> tuple[int, ...]:
    """``cu_seqlens`` as host integers (one device sync per tensor and version)."""
    return derived(cu, "bounds", lambda: tuple(int(b) for b in cu.tolist()))
