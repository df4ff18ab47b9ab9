"""Config resolution memoised per call signature, shared by the strategies.

Every op call resolves its strategy's config: the default for its signature and shape, merged
with the user's or the autotuner's, then checked. That is pure in its arguments and costs more
host time than looking it up (tens of microseconds of Python against a ~0.1 ms kernel), so each
strategy resolves through ``config_memo``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

__all__ = ["config_memo"]

_MAX_ENTRIES = 512


def config_memo(resolve: Callable[..., Any]) -> Callable[..., Any]:
    """Memoise ``resolve(*key, config)`` on ``key`` (hashable: sig, shape, dtype...) and the
    config's items. The result is shared between calls: treat the dicts in it as read-only.
    A config that cannot be hashed is resolved afresh."""
    memo: dict[tuple, Any] = {}

    @functools.wraps(resolve)
    def memoised(*key: Any, config: dict | None = None) -> Any:
        try:
            k = (key, frozenset(config.items()) if config else None)
            return memo[k]
        except KeyError:
            pass
        except TypeError:
            return resolve(*key, config=config)
        if len(memo) >= _MAX_ENTRIES:
            memo.clear()
        out = memo[k] = resolve(*key, config=config)
        return out

    memoised.cache_clear = memo.clear  # type: ignore[attr-defined]
    return memoised
