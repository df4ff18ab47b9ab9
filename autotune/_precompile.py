"""Parallel pre-compile for the exhaustive grid: fill Triton's disk cache before the timed walk.

On a GPU a grid walk spends ~1.5-2 s per config, almost all of it Triton JIT compilation,
one config after another in the single tuning process. Compiled kernels land in Triton's
on-disk cache (``~/.triton/cache`` or ``TRITON_CACHE_DIR``), which every process on the
host shares. So before the walk, ``workers`` spawned processes each run their share of the
grid once on inputs of the *timing* shape (forward, and backward when the backward is timed
or checked); the walk that follows, in this process, then only loads compiled binaries.

Nothing a worker sees is kept: a config that raises is skipped silently, and the walk records
its real outcome through the usual gates. A worker that dies (a device fault, ``os._exit``)
or cannot start ends the pass with a warning; the walk then compiles what is left itself.
Workers rebuild the problem from picklable parts (signature, shape, dtype, device, the
strategy loader, ``make_inputs``) and load strategy modules by name; a loader or
``make_inputs`` that cannot be pickled (a closure) skips the pass with a one-line note.
"""

from __future__ import annotations

import multiprocessing
import pickle
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from scandsl._core import CoreSig, Shape

from ._evaluate import Evaluator, MakeInputs

__all__ = ["precompile", "COMPILED_ON"]

# Device types whose kernels are JIT-compiled, so worth pre-compiling. The Triton interpreter
# (CPU) compiles nothing; tests add "cpu" here to exercise the pass without a GPU.
COMPILED_ON: tuple[str, ...] = ("cuda",)


@dataclass(frozen=True)
class _Job:
    """What a worker needs to rebuild the problem: picklable by construction."""

    sig: CoreSig
    shape: Shape
    dtype: torch.dtype
    device: torch.device
    backward: bool
    loader: Callable[[str], ModuleType | None]
    make_inputs: MakeInputs | None


def precompile(
    items: Sequence[tuple[str, dict[str, Any]]],
    *,
    evaluator: Evaluator,
    workers: int,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Run every valid (strategy, config) of ``items`` once in ``workers`` spawned processes.

    Items are handed out in order (so a walk cut short by its budget finds its first configs
    compiled); none is handed out after ``deadline`` (a ``time.perf_counter()`` value).
    Returns what to record in the grid's meta: ``precompile_s``, ``precompiled`` (configs the
    workers ran, whether or not they raised) and, when the pass was skipped or cut short,
    ``precompile_note``.
    """
    t0 = time.perf_counter()
    ev = evaluator
    if ev.device.type not in COMPILED_ON:
        return _note(t0, 0, f"pre-compile skipped: kernels on {ev.device.type} are not compiled")
    # the evaluator's default inputs are its own bound method: a worker's evaluator makes the same
    job = _Job(
        ev.sig, ev.shape, ev.dtype, ev.device, ev.objective == "fwd_bwd" or ev.check_grads,
        ev.loader, None if ev.make_inputs == ev._default_inputs else ev.make_inputs,
    )  # fmt: skip
    try:
        pickle.dumps(job)
    except Exception as err:
        return _note(
            t0, 0, f"pre-compile skipped: the loader or make_inputs cannot be sent to a worker ({err})"
        )
    todo = [(s, cfg) for s, cfg in items if _valid(ev, s, cfg)]
    if not todo:
        return _note(t0, 0, None)
    ran, note = 0, None
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx, initializer=_start, initargs=(job,))
    try:
        pending: set = set()
        queue = iter(todo)
        while True:
            # keep each worker one item ahead; hand nothing out once the deadline has passed
            while len(pending) < 2 * workers and (deadline is None or time.perf_counter() < deadline):
                item = next(queue, None)
                if item is None:
                    break
                pending.add(pool.submit(_compile_one, *item))
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                fut.result()  # raises BrokenProcessPool when a worker died or could not start
                ran += 1
        if ran < len(todo):
            note = f"pre-compile stopped at the time budget after {ran} of {len(todo)} configs"
    except Exception as err:  # never the search's end: the walk compiles what is left itself
        text = f"{type(err).__name__}: {err}".replace("\n", " ")[:200]
        note = f"pre-compile stopped after {ran} of {len(todo)} configs ({text}); the walk compiles the rest"
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return _note(t0, ran, note)


def _note(t0: float, ran: int, note: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"precompile_s": time.perf_counter() - t0, "precompiled": ran}
    if note is not None:
        warnings.warn(note, RuntimeWarning, stacklevel=4)
        meta["precompile_note"] = note
    return meta


def _valid(ev: Evaluator, strategy: str, config: dict[str, Any]) -> bool:
    try:
        return ev.module(strategy).search_space(ev.sig, ev.shape).valid(config) is None
    except Exception:  # the walk records why
        return False


# -- in the worker process ------------------------------------------------------------------

_EVALUATOR: Evaluator | None = None


def _start(job: _Job) -> None:
    global _EVALUATOR
    torch.set_num_threads(1)  # workers compile; many of them must not fight over CPU threads
    _EVALUATOR = Evaluator(
        job.sig, job.shape, job.dtype, loader=job.loader, make_inputs=job.make_inputs, device=job.device,
        objective="fwd_bwd" if job.backward else "fwd",
    )  # fmt: skip


def _compile_one(strategy: str, config: dict[str, Any]) -> None:
    """One run of the config on the timing inputs: its kernels compile into the disk cache."""
    ev = _EVALUATOR
    assert ev is not None
    try:
        ev._timed_fn(ev.module(strategy), config)()  # what the walk will time, once
        if ev.device.type == "cuda":
            torch.cuda.synchronize(ev.device)
    except Exception:  # the walk measures this config and records the real outcome
        pass
