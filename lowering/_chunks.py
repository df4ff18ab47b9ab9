"""The chunk map of the chunked strategies: which sequence, and which position in it, each chunk is.

Sequences are ``[bos, eos)`` ranges of the flattened ``[B * T]`` token axis: B sequences of length
T, or the ranges ``cu_seqlens`` gives (varlen). Chunks of ``C`` steps start at each sequence's own
start, so none crosses a boundary (a sequence's last chunk may be short). Kernels that run one
program per chunk read, for chunk ``i`` of their grid, its sequence ``chunk_seq[i]`` and its
position ``chunk_loc[i]`` there; sequence ``n``'s chunks are ``chunk_off[n]`` onwards, the offset of
its per-chunk scratch. A fixed-length map is built on the device; a varlen one costs one host
sync, since the number of chunks, and so the launch grid, depends on the lengths: once per
``cu_seqlens`` tensor (:mod:`scandsl._seqlens`), so the layers of a step share it.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from scandsl.lowering._tiles import cdiv

from scandsl._seqlens import derived, host_bounds

__all__ = ["ChunkMap", "chunk_map"]


class ChunkMap(NamedTuple):
    """int32 tensors on the device: ``cu`` ([N + 1] sequence bounds), ``chunk_seq`` and
    ``chunk_loc`` ([total chunks]), ``chunk_off`` ([N])."""

    cu: torch.Tensor
    chunk_seq: torch.Tensor
    chunk_loc: torch.Tensor
    chunk_off: torch.Tensor


def chunk_map(cu_seqlens: torch.Tensor | None, B: int, T: int, C: int, device: torch.device) -> ChunkMap:
    """The chunk map of ``cu_seqlens``'s sequences, or of B sequences of length T without it."""
    if cu_seqlens is None:
        return _fixed_length(B, T, C, device)
    return _varlen(cu_seqlens, C, device)


@functools.lru_cache(maxsize=64)
def _fixed_length(B: int, T: int, C: int, device: torch.device) -> ChunkMap:
    nc = cdiv(T, C)
    ids = torch.arange(B * nc, device=device, dtype=torch.int32)
    cu = torch.arange(B + 1, device=device, dtype=torch.int32) * T
    return ChunkMap(cu, ids // nc, ids % nc, torch.arange(B, device=device, dtype=torch.int32) * nc)


def _varlen(cu_seqlens: torch.Tensor, C: int, device: torch.device) -> ChunkMap:
    return derived(cu_seqlens, ("chunk_map", C, device), lambda: _build_varlen(cu_seqlens, C, device))


def _build_varlen(cu_seqlens: torch.Tensor, C: int, device: torch.device) -> ChunkMap:
    bounds = host_bounds(cu_seqlens)  # the host sync, once per cu_seqlens tensor
    lens = [e - s for s, e in zip(bounds, bounds[1:])]
    counts = torch.tensor([cdiv(n, C) for n in lens], dtype=torch.int64)
    off = torch.cumsum(counts, 0) - counts
    seq = torch.repeat_interleave(torch.arange(len(lens)), counts)
    loc = torch.arange(int(counts.sum())) - torch.repeat_interleave(off, counts)
    seq, loc, off = (t.to(device=device, dtype=torch.int32) for t in (seq, loc, off))
    return ChunkMap(cu_seqlens.to(device=device, dtype=torch.int32), seq, loc, off)
