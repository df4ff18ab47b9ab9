"""Telling a broken GPU context from an ordinary error.

After some CUDA errors (an illegal memory access, a launch failure, a device-side assert) the
process's context is lost: every later launch fails too. Whoever runs many kernels in one
process (the autotuner, the benchmark harness) must stop there instead of recording a cascade.
"""

from __future__ import annotations

__all__ = ["is_device_fault"]

_STICKY = (
    "illegal memory access",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "device-side assert",
)


def is_device_fault(err: BaseException | str) -> bool:
    """Whether ``err`` (an exception or its text) is a CUDA error that loses the context."""
    text = str(err).lower()
    return any(s in text for s in _STICKY)
