"""Typed search spaces: each strategy describes its tile parameters as data."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import product
from typing import Any

__all__ = ["Param", "SearchSpace"]


@dataclass(frozen=True, slots=True)
class Param:
    """One categorical tuning parameter and its allowed values (in a sensible order)."""

    name: str
    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError(f"Param {self.name!r}: choices must be non-empty")


@dataclass(frozen=True, slots=True)
class SearchSpace:
    """The product of ``params``, restricted by ``valid(config) -> str | None``.

    ``valid`` returns None for a config that can run, else the reason it cannot
    (shared memory, registers, divisibility), so rejections are explainable.
    """

    strategy: str
    params: tuple[Param, ...]
    valid: Callable[[Mapping[str, Any]], str | None] = field(default=lambda cfg: None)

    def grid(self) -> list[dict[str, Any]]:
        """Every valid config (the exhaustive baseline autotuning is measured against)."""
        names = [p.name for p in self.params]
        configs = [dict(zip(names, values)) for values in product(*(p.choices for p in self.params))]
        return [cfg for cfg in configs if self.valid(cfg) is None]
