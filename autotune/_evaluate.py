"""Evaluating one candidate (strategy, config): validate, check, then time.

Every candidate goes through the same three gates, in order, and stops at the first
that fails; the outcome is a :class:`TrialRecord` whose ``state`` says which:

1. ``invalid`` — the strategy's search-space predicate rejects the config (it cannot fit:
   shared memory, registers, divisibility); nothing is compiled;
2. ``error`` — compiling or launching raised (Triton's out-of-resources, a lowering bug);
3. ``wrong`` — the output (and, if asked, the gradients) on a small *probe* problem is
   not within the dtype's tolerance of ``core_reference`` on the same inputs. A config
   that miscompiles — Triton has shipped such bugs on Hopper — can never win, however fast;
4. ``ok`` — timed on the full-size inputs: the median of ``triton.testing.do_bench`` on a
   GPU, or whatever ``timer`` was given (CPU tests pass a synthetic one).

Inputs are made once per evaluator (fresh random values, never zeros) and reused by every
candidate, so candidates are compared on identical data.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import torch

from scandsl._core import CoreInputs, CoreSig, Shape, core_reference
from scandsl._device import is_device_fault
from scandsl.testing import TOLERANCES, random_core_inputs, rel_err

__all__ = [
    "TrialRecord",
    "Evaluator",
    "Timer",
    "MakeInputs",
    "do_bench_timer",
    "wallclock_timer",
    "probe_shape_for",
]

MakeInputs = Callable[[Shape, int], CoreInputs]  # (shape, seed) -> inputs on the tuning device


class Timer(Protocol):
    def __call__(self, fn: Callable[[], Any], *, strategy: str, config: dict[str, Any]) -> float: ...


@dataclass(slots=True)
class TrialRecord:
    """One evaluated candidate. ``ms`` is set only when ``state == "ok"``."""

    strategy: str
    config: dict[str, Any]
    state: str  # "ok" | "invalid" | "error" | "wrong"
    ms: float | None = None
    reason: str = ""
    err: float | None = None  # relative error of the probe output (when it ran)
    number: int = -1  # Optuna trial number (or position in a grid)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def label(self) -> str:
        cfg = ", ".join(f"{k}={v}" for k, v in self.config.items())
        return f"{self.strategy}({cfg})" if cfg else self.strategy


def do_bench_timer(fn: Callable[[], Any], *, strategy: str, config: dict[str, Any]) -> float:
    """Median milliseconds from ``triton.testing.do_bench`` (CUDA events, warm-up excluded)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def wallclock_timer(fn: Callable[[], Any], *, strategy: str, config: dict[str, Any]) -> float:
    """Median of a few host-clock runs: the CPU fallback (interpreted kernels, tests)."""
    fn()  # warm-up: compilation / first-call costs stay out of the number
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def probe_shape_for(shape: Shape) -> Shape:
    """A small problem that runs the *same compiled kernel* as the timed one, on partial blocks.

    K and V are kept (tile legality). Triton specialises integer arguments on ``== 1`` and on
    divisibility by 16, so B stays above 1 and T keeps the timed T's divisibility: 144 (= 9·16,
    a partial last block for chunks of 32, 64 and 128) when T is a multiple of 16, else 131.
    A config is then compiled once for probe and timing alike, and a miscompile of the timed
    specialisation is what the probe catches.
    """
    if shape.T % 16 == 0:
        T = min(shape.T, 144)
    else:
        T = min(shape.T, 131)
    return Shape(B=min(shape.B, 2), T=T, H=min(shape.H, 4), K=shape.K, V=shape.V)


class DeviceFault(RuntimeError):
    """A candidate broke the GPU context (e.g. an illegal memory access).

    Every later evaluation in this process would fail too, so the search stops instead of
    recording a cascade of errors; ``record`` is the faulting candidate (state ``error``), which
    the study keeps as failed, so a resumed search never runs it again.
    """

    def __init__(self, record: TrialRecord):
        self.record = record
        self.records: list[TrialRecord] = []  # every trial of the study so far (tune() fills it)
        super().__init__(
            f"{record.strategy} config {record.config} faulted the GPU ({record.reason}); the CUDA "
            "context of this process is lost. Evaluations so far are kept; the faulting config is "
            "recorded as failed and is not run again: start the same search in a new process to go on."
        )


def _short(err: BaseException, limit: int = 300) -> str:
    text = f"{type(err).__name__}: {err}".strip().replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _leaves(x: CoreInputs) -> dict[str, torch.Tensor]:
    return {n: t for n, t in x.tensors().items() if n != "cu_seqlens" and t.is_floating_point()}


def _with_grad(x: CoreInputs) -> CoreInputs:
    fresh = {n: t.detach().clone().requires_grad_(True) for n, t in _leaves(x).items()}
    return dataclasses.replace(x, **fresh)


class Evaluator:
    """Runs the gates above for one (sig, shape, dtype) problem."""

    def __init__(
        self,
        sig: CoreSig,
        shape: Shape,
        dtype: torch.dtype,
        *,
        loader: Callable[[str], ModuleType | None],
        make_inputs: MakeInputs | None = None,
        timer: Timer | None = None,
        device: torch.device | str | None = None,
        check_grads: bool = False,
        objective: str = "fwd",
        probe_shape: Shape | None = None,
    ) -> None:
        if objective not in ("fwd", "fwd_bwd"):
            raise ValueError(f"objective must be 'fwd' or 'fwd_bwd', got {objective!r}")
        self.sig, self.shape, self.dtype = sig, shape, dtype
        self.loader = loader
        self.device = torch.device(device) if device is not None else _default_device()
        self.make_inputs = make_inputs or self._default_inputs
        self.timer = timer or (do_bench_timer if self.device.type == "cuda" else wallclock_timer)
        self.check_grads = check_grads
        self.objective = objective
        self.probe_shape = probe_shape or probe_shape_for(shape)
        self.out_tol, self.grad_tol = TOLERANCES[dtype]
        self._modules: dict[str, ModuleType] = {}
        self._probe: tuple[CoreInputs, torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]] | None = (
            None
        )
        self._timing_inputs: CoreInputs | None = None

    # -- inputs ----------------------------------------------------------------------------
    def _default_inputs(self, shape: Shape, seed: int) -> CoreInputs:
        return random_core_inputs(
            self.sig, B=shape.B, T=shape.T, H=shape.H, K=shape.K, V=shape.V,
            dtype=self.dtype, device=self.device, seed=seed,
        )  # fmt: skip

    def module(self, strategy: str) -> ModuleType:
        mod = self._modules.get(strategy)
        if mod is None:
            mod = self.loader(strategy)
            if mod is None:
                raise ValueError(f"strategy {strategy!r} is not built in this install")
            self._modules[strategy] = mod
        return mod

    def _probe_data(self):
        """Probe inputs, the reference output/state and (optionally) reference gradients; made once."""
        if self._probe is None:
            x = self.make_inputs(self.probe_shape, 1234)
            ref_x = dataclasses.replace(x, out_dtype=torch.float32)
            grads: dict[str, torch.Tensor] = {}
            if self.check_grads:
                gx = _with_grad(ref_x)
                o, s = core_reference(self.sig, gx)
                do = torch.randn(o.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
                do = do.to(o.device)
                o.backward(do)
                grads = {n: t.grad.detach() for n, t in _leaves(gx).items() if t.grad is not None}
                grads["__do__"] = do
                o, s = o.detach(), None if s is None else s.detach()
            else:
                with torch.no_grad():
                    o, s = core_reference(self.sig, ref_x)
            self._probe = (x, o, s, grads)
        return self._probe

    def timing_inputs(self) -> CoreInputs:
        if self._timing_inputs is None:
            x = self.make_inputs(self.shape, 0)
            if self.objective == "fwd_bwd":
                x = _with_grad(x)
            self._timing_inputs = x
        return self._timing_inputs

    # -- the gates -------------------------------------------------------------------------
    def evaluate(self, strategy: str, config: dict[str, Any]) -> TrialRecord:
        rec = TrialRecord(strategy=strategy, config=dict(config), state="ok")
        try:
            mod = self.module(strategy)
            space = mod.search_space(self.sig, self.shape)
            reason = space.valid(config)
        except Exception as err:
            rec.state, rec.reason = "error", f"search space: {_short(err)}"
            return rec
        if reason is not None:
            rec.state, rec.reason = "invalid", reason
            return rec
        t0 = time.perf_counter()  # where a grid's time goes: the check (with first launches) and the timing
        try:
            wrong = self._check(mod, config, rec)
        except Exception as err:
            rec.state, rec.reason = "error", _short(err)
            return self._fault_or(rec, err)
        if wrong is not None:
            rec.state, rec.reason = "wrong", wrong
            return rec
        t1 = time.perf_counter()
        rec.extra["check_s"] = round(t1 - t0, 4)
        try:
            ms = float(self.timer(self._timed_fn(mod, config), strategy=strategy, config=dict(config)))
            rec.extra["time_s"] = round(time.perf_counter() - t1, 4)
        except Exception as err:
            rec.state, rec.reason = "error", f"while timing: {_short(err)}"
            return self._fault_or(rec, err)
        if not (math.isfinite(ms) and ms > 0):
            rec.state, rec.reason = "error", f"timer returned {ms!r}"
            return rec
        rec.ms = ms
        return rec

    @staticmethod
    def _fault_or(rec: TrialRecord, err: BaseException) -> TrialRecord:
        if is_device_fault(err):
            rec.extra["device_fault"] = True
            raise DeviceFault(rec) from err
        return rec

    def _check(self, mod: ModuleType, config: dict[str, Any], rec: TrialRecord) -> str | None:
        x, o_ref, s_ref, g_ref = self._probe_data()
        if self.check_grads:
            x = _with_grad(x)
            o, s = mod.run(self.sig, x, dict(config))
            o.float().backward(g_ref["__do__"])
        else:
            with torch.no_grad():
                o, s = mod.run(self.sig, x, dict(config))
        rec.err = rel_err(o, o_ref)
        if not rec.err <= self.out_tol:
            return f"output relative error {rec.err:.2e} > {self.out_tol:.0e} vs core_reference"
        if s_ref is not None:
            if s is None:
                return "no final state returned though output_final_state=True"
            e = rel_err(s, s_ref)
            if not e <= self.out_tol:
                return f"final-state relative error {e:.2e} > {self.out_tol:.0e}"
        for name, ref in g_ref.items():
            if name == "__do__":
                continue
            got = getattr(x, name).grad
            if got is None:
                return f"no gradient for {name}"
            e = rel_err(got, ref)
            if not e <= self.grad_tol:
                return f"d{name} relative error {e:.2e} > {self.grad_tol:.0e}"
        return None

    def _timed_fn(self, mod: ModuleType, config: dict[str, Any]) -> Callable[[], Any]:
        x, sig, cfg = self.timing_inputs(), self.sig, dict(config)
        if self.objective == "fwd":

            def fwd():
                with torch.no_grad():
                    return mod.run(sig, x, cfg)

            return fwd
        leaves = list(_leaves(x).values())
        o0, _ = mod.run(sig, x, cfg)
        do = torch.randn_like(o0)
        del o0

        def fwd_bwd():
            for t in leaves:
                t.grad = None
            o, _ = mod.run(sig, x, cfg)
            o.backward(do)

        return fwd_bwd


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
