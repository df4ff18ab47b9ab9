"""What a tuned config is valid for: the cache key.

A config measured on one GPU, compiler and code version says nothing about another, so
the key holds the device name and compute capability, the Triton and scandsl versions,
the spec (``spec_key``, a hash the spec layer computes) and the core stage's signature,
the dtype, and a *shape bucket*: ``T`` and ``B·H`` rounded up to a power of two (tiles
care about their order of magnitude, and rounding keeps the cache small), ``K`` and ``V``
exact (tile legality depends on them).

Everything here is cheap after the first call: device facts and versions are read once
per process, because ``choose()`` builds a key on every ``strategy="auto"`` call.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass
from importlib import metadata

import torch

from scandsl._core import CoreSig, Shape

__all__ = ["TuneKey", "DeviceInfo", "device_info", "shape_bucket", "make_key", "sig_tag"]


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    name: str  # "NVIDIA H100 80GB HBM3", or "cpu"
    capability: str  # "9.0", or "" off-GPU
    triton: str
    scandsl: str


@dataclass(frozen=True, slots=True)
class TuneKey:
    """One cache entry's identity; ``str(key)`` is its JSON key and Optuna study name."""

    device: str
    capability: str
    triton: str
    scandsl: str
    spec_key: str
    sig: str  # short tag of the core stage's CoreSig (one spec may have several stages)
    dtype: str
    B_H: int  # bucket of B*H (power of two, rounded up)
    T: int  # bucket of T (power of two, rounded up)
    K: int
    V: int

    def __str__(self) -> str:
        return (
            f"{self.device}|sm{self.capability}|triton-{self.triton}|scandsl-{self.scandsl}|"
            f"{self.spec_key}|{self.sig}|{self.dtype}|BH{self.B_H}|T{self.T}|K{self.K}|V{self.V}"
        )

    def fields(self) -> dict[str, object]:
        return asdict(self)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


@functools.cache
def _device_info_cached(index: int | None) -> DeviceInfo:
    import scandsl

    triton = _version("triton")
    if index is None:
        return DeviceInfo("cpu", "", triton, scandsl.__version__)
    major, minor = torch.cuda.get_device_capability(index)
    return DeviceInfo(torch.cuda.get_device_name(index), f"{major}.{minor}", triton, scandsl.__version__)


def device_info(device: torch.device | str | int | None = None) -> DeviceInfo:
    """Facts about ``device`` (default: the current CUDA device, or the CPU without one)."""
    if device is None:
        index = torch.cuda.current_device() if _cuda_available() else None
    elif isinstance(device, int):
        index = device
    else:
        dev = torch.device(device)
        index = (
            None
            if dev.type != "cuda"
            else (dev.index if dev.index is not None else torch.cuda.current_device())
        )
    return _device_info_cached(index)


@functools.cache
def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _pow2_ceil(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def shape_bucket(shape: Shape) -> tuple[int, int, int, int]:
    """(B·H bucket, T bucket, K, V)."""
    return _pow2_ceil(shape.B * shape.H), _pow2_ceil(shape.T), shape.K, shape.V


@functools.cache
def sig_tag(sig: CoreSig) -> str:
    """A short, stable, readable tag of a CoreSig (``scalar-identity-after``, + a hash of statics)."""
    tag = f"{sig.decay.value}-{sig.transition.value}-{sig.readout.value}"
    statics = [n for n in ("key_static", "query_static", "decay_static") if getattr(sig, n)]
    if statics:
        tag += "-" + hashlib.sha1(",".join(statics).encode()).hexdigest()[:6]
    return tag


_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def make_key(
    spec_key: str,
    sig: CoreSig,
    shape: Shape,
    dtype: torch.dtype,
    device: torch.device | str | int | None = None,
) -> TuneKey:
    info = device_info(device)
    bh, t, k, v = shape_bucket(shape)
    return TuneKey(
        device=info.name,
        capability=info.capability,
        triton=info.triton,
        scandsl=info.scandsl,
        spec_key=spec_key,
        sig=sig_tag(sig),
        dtype=dtype_name(dtype),
        B_H=bh,
        T=t,
        K=k,
        V=v,
    )
