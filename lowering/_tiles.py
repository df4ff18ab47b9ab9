"""Tile arithmetic shared by every strategy."""

from __future__ import annotations

__all__ = ["dot_pad", "pow2", "cdiv"]


def pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (and >= 1): a feature size padded for ``tl.arange``."""
    return 1 << (max(int(n), 1) - 1).bit_length()


def dot_pad(n: int) -> int:
    """A feature size padded for ``tl.dot``: a power of two, at least 16 (its smallest dimension)."""
    return max(16, pow2(n))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
