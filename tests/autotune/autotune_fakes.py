"""Fake strategy modules for autotune tests: the real API, synthetic costs, planted bugs.

A fake strategy computes the right answer with ``core_reference`` (memoised per input
object, so a 1000-config grid stays fast), except on configs a test marks ``wrong``
(output scaled by 1.1), ``crash`` (raises like a Triton out-of-resources error) or ``fault``
(raises like a kernel that broke the CUDA context). Its
time comes from a synthetic cost model through :func:`synthetic_timer`.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from scandsl.autotune import Param, SearchSpace

from scandsl._core import CoreSig, Decay, Shape, core_reference

_REF_MEMO: dict[int, tuple] = {}


def _reference(sig: CoreSig, x) -> tuple:
    key = id(x.q)
    hit = _REF_MEMO.get(key)
    if hit is None or hit[0] is not x.q:
        out = core_reference(sig, x)
        hit = (x.q, out)
        _REF_MEMO[key] = hit
    return hit[1]


def make_fake(
    name: str,
    *,
    params: tuple[Param, ...],
    cost: Callable[[dict[str, Any]], float],
    default: dict[str, Any],
    valid: Callable[[dict[str, Any]], str | None] = lambda cfg: None,
    wrong: Callable[[dict[str, Any]], bool] = lambda cfg: False,
    crash: Callable[[dict[str, Any]], bool] = lambda cfg: False,
    fault: Callable[[dict[str, Any]], bool] = lambda cfg: False,
    supports: Callable[[CoreSig], str | None] = lambda sig: None,
) -> SimpleNamespace:
    calls = {"run": 0}

    def run(sig: CoreSig, x, config: dict | None = None):
        calls["run"] += 1
        cfg = dict(default if config is None else config)
        if crash(cfg):
            raise RuntimeError(
                f"triton.runtime.errors.OutOfResources: out of resource: shared memory ({cfg})"
            )
        if fault(cfg):  # what a kernel that breaks the CUDA context raises
            raise RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered")
        if x.q.requires_grad:
            o, s = core_reference(sig, x)
        else:
            o, s = _reference(sig, x)
        if wrong(cfg):
            o = o * 1.1
        return o, s

    return SimpleNamespace(
        __name__=f"fake.{name}",
        name=name,
        calls=calls,
        cost=cost,
        supports=supports,
        run=run,
        search_space=lambda sig, shape: SearchSpace(name, params, valid),
        default_config=lambda sig, shape: dict(default),
    )


def chunk_like(**kw) -> SimpleNamespace:
    """A 4×4×4×3 = 192-config 'chunk' space with a smooth, bumpy cost and a few traps."""
    params = (
        Param("BT", (16, 32, 64, 128)),
        Param("BK", (16, 32, 64, 128)),
        Param("BV", (16, 32, 64, 128)),
        Param("num_warps", (2, 4, 8)),
    )

    def cost(cfg):
        bt, bk, bv, w = cfg["BT"], cfg["BK"], cfg["BV"], cfg["num_warps"]
        c = 1.0 + 0.3 * abs(bt - 64) / 64 + 0.2 * abs(bk - 64) / 64 + 0.25 * abs(bv - 32) / 32
        c += {2: 0.15, 4: 0.0, 8: 0.05}[w] + 0.01 * ((bt * 7 + bk * 3 + bv) % 5)
        return c

    def valid(cfg):
        if cfg["BK"] * cfg["BV"] > 64 * 128:
            return f"BK*BV={cfg['BK'] * cfg['BV']} floats of state exceed the register budget"
        return None

    kw.setdefault("params", params)
    kw.setdefault("cost", cost)
    kw.setdefault("valid", valid)
    kw.setdefault("default", {"BT": 64, "BK": 64, "BV": 64, "num_warps": 4})
    kw.setdefault("supports", lambda sig: None if sig.decay is not Decay.CHANNEL else "no chunked form")
    return make_fake("chunk", **kw)


def sequential_like(**kw) -> SimpleNamespace:
    params = (Param("BV", (16, 32, 64)), Param("num_warps", (1, 2, 4)))
    kw.setdefault("params", params)
    kw.setdefault("cost", lambda cfg: 3.0 + 0.1 * cfg["num_warps"] + 16 / cfg["BV"])
    kw.setdefault("default", {"BV": 32, "num_warps": 2})
    return make_fake("sequential", **kw)


def scan_like(**kw) -> SimpleNamespace:
    params = (Param("BT", (32, 64)), Param("num_warps", (2, 4)))
    kw.setdefault("params", params)
    kw.setdefault("cost", lambda cfg: 2.0 + 32 / cfg["BT"] * 0.1 + 0.05 * cfg["num_warps"])
    kw.setdefault("default", {"BT": 64, "num_warps": 4})
    return make_fake("scan", **kw)


def loader_for(*mods: SimpleNamespace) -> Callable[[str], SimpleNamespace | None]:
    table = {m.name: m for m in mods}
    return lambda name: table.get(name)


def synthetic_timer(mods: dict[str, SimpleNamespace]):
    """A timer that runs ``fn`` once (so crashes surface) and returns the fake's cost model."""

    def timer(fn, *, strategy: str, config: dict[str, Any]) -> float:
        fn()
        return mods[strategy].cost(config)

    return timer


TINY = Shape(B=1, T=20, H=1, K=16, V=16)  # timing shape for tests: the fakes run core_reference on it
