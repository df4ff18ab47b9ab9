"""Tile arithmetic shared by every strategy."""

from __future__ import annotations

__all__ = ["dot_pad", "cdiv"]


def dot_pad(n: int) -> int:
    """A feature size padded for ``tl.dot``: a power of two, at least 16 (its smallest dimension)."""
    return max(16, 1 << (max(int(n), 1) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
