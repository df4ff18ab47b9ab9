"""Running one benchmark case: check first, then time, beside the floor.

A :class:`Case` is data plus callables — make inputs, run the reference, slice a time
prefix, and a list of :class:`Impl` (ours per strategy, anchors) that each *prepare* a
zero-argument function on given inputs. :func:`run_case` then, per implementation:

1. runs it once on the case's inputs and compares the output (and final state) with the
   float32 reference on the same inputs — on the first ``check_T`` steps when ``T`` is
   longer (causality makes the prefix of the full output the output of the prefix), so
   the reference loop stays affordable. A wrong kernel of ours is ``wrong`` and gets *no*
   timing (and the run's exit status says so); a disagreeing anchor is ``mismatch``;
2. for ``fwd_bwd``, checks the gradients of ours on a short prefix against the
   reference's autograd;
3. times ``fwd`` and ``fwd_bwd`` on fresh random inputs (never zeros), twice
   (:func:`graph_and_eager_ms`): as a CUDA graph of the call, replayed after an L2 flush each
   time — the device's time, which is what a model whose host runs ahead of its GPU waits for,
   and what repeats from run to run — and eagerly, as ``triton.testing.do_bench`` medians
   (CUDA events, gradients reset between repetitions), which also reads the host's time per
   call wherever that is longer than the device's (small forwards: both ours and the anchors'
   Python). ``ms`` is the graph time, ``eager_ms`` the other; an implementation whose call
   cannot be captured (a host sync inside) is timed eagerly only and says why.

Every record carries the case's floor (bytes and FLOPs over the ceilings measured in the
same run, see ``_floor``), so ratios to the floor and to the anchors come out of the JSON.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from scandsl._core import Shape
from scandsl.testing import TOLERANCES, rel_err

from ._anchors import AnchorAbsent
from ._floor import Ceilings, Work, floor_ms, tensor_bytes

__all__ = ["Impl", "Case", "run_case", "Timer", "do_bench_ms", "graph_ms", "graph_and_eager_ms", "compare"]

# prepare(inputs, requires_grad) -> (fn() -> (o, final_state | None), {name: grad leaf})
PrepareFn = Callable[[Any, bool], tuple[Callable[[], tuple], dict[str, torch.Tensor]]]
# (fn, grad_to_none) -> median ms, (median ms, relative noise) as do_bench_ms returns, or the
# record fields as graph_and_eager_ms returns them
Timer = Callable[[Callable[[], Any], list], "float | tuple[float, float] | dict[str, Any]"]


@dataclass(frozen=True)
class Impl:
    name: str  # "ours.chunk", "fla.chunk_gla"
    kind: str  # "ours" | "anchor"
    prepare: PrepareFn


@dataclass
class Case:
    name: str
    op: str
    shape: Shape
    dtype: torch.dtype
    impls: list[Impl]
    make_inputs: Callable[[int, torch.device], Any]
    reference: Callable[[Any], tuple]  # float32 (o, final_state | None) of the given inputs
    slice_T: Callable[[Any, int], Any]  # the first T' steps of the inputs
    reference_grads: Callable[[Any, torch.Tensor], dict[str, torch.Tensor]] | None = None
    input_bytes: Callable[[Any], int] = tensor_bytes
    state_elems: int = 0
    modes: tuple[str, ...] = ("fwd", "fwd_bwd")
    group: str = ""  # plots: cases of one group form a line over ``x``
    x: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


MIN_REPS = 12


def do_bench_ms(fn: Callable[[], Any], grad_to_none: list) -> tuple[float, float]:
    """(median ms, relative noise): the noise is half the 20–80 % quantile range over the median,
    the spread a second run's median is expected to fall in."""
    from triton.testing import do_bench

    # do_bench repeats for ``rep`` ms: at 100 ms a 40 ms case got 2 repetitions, whose median
    # and quantiles say little; one timed call sizes ``rep`` for at least MIN_REPS of them
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    rep = max(100.0, MIN_REPS * start.elapsed_time(end))
    q20, q50, q80 = do_bench(
        fn, warmup=25, rep=rep, grad_to_none=grad_to_none or None, quantiles=[0.2, 0.5, 0.8]
    )
    return float(q50), float(q80 - q20) / (2 * float(q50))


def _quantiles(times: list[float]) -> tuple[float, float]:
    """(median, noise) as do_bench_ms reports them: half the 20–80 % range over the median."""
    q20, q50, q80 = torch.quantile(torch.tensor(times), torch.tensor([0.2, 0.5, 0.8])).tolist()
    return q50, (q80 - q20) / (2 * q50)


def graph_ms(fn: Callable[[], Any], grad_to_none: list, budget_ms: float = 200.0) -> tuple[float, float]:
    """:func:`graph_capture_ms`, tried twice: the first capture in a process has failed ("operation
    failed due to a previous error during capture") where a second one of the same call passed."""
    try:
        return graph_capture_ms(fn, grad_to_none, budget_ms)
    except Exception:
        torch.cuda.synchronize()
        return graph_capture_ms(fn, grad_to_none, budget_ms)


def graph_capture_ms(
    fn: Callable[[], Any], grad_to_none: list, budget_ms: float = 200.0
) -> tuple[float, float]:
    """(median ms, relative noise) of ``fn`` captured once as a CUDA graph and replayed, each
    replay after the same L2 flush do_bench uses (a 256 MB write), timed by CUDA events.

    Warm-up runs on a side stream first, as capture needs (and every kernel compiles and every
    anchor autotunes there); gradients are reset before the capture, so the captured backward
    writes fresh ``.grad`` tensors, which each replay overwrites. Raises what the capture
    raises (a host sync inside ``fn``)."""
    gc.collect()  # an earlier call's autograd graph kept alive by a cycle ties its leaves' AccumulateGrad
    side = torch.cuda.Stream()  # nodes to the default stream, which a captured backward must not touch
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            for t in grad_to_none:
                t.grad = None
            fn()
    torch.cuda.current_stream().wait_stream(side)
    for t in grad_to_none:
        t.grad = None
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=side):  # the stream the warm-up initialised
            fn()
        flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        reps = int(min(max(budget_ms / max(start.elapsed_time(end), 1e-3), 20), 400))
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)
        ]
        for a, b in events:
            flush.zero_()
            a.record()
            graph.replay()
            b.record()
        torch.cuda.synchronize()
        return _quantiles([a.elapsed_time(b) for a, b in events])
    finally:
        del graph
        for t in grad_to_none:
            t.grad = None


def graph_and_eager_ms(fn: Callable[[], Any], grad_to_none: list) -> dict[str, Any]:
    """Record fields: ``ms`` / ``noise`` from the CUDA graph (``timing="graph"``), ``eager_ms`` /
    ``eager_noise`` from do_bench; eager only (``timing="eager"``) when the capture fails."""
    eager, eager_noise = do_bench_ms(fn, grad_to_none)
    try:
        ms, noise = graph_ms(fn, grad_to_none)
    except Exception as err:  # a call that cannot be captured is still timed, eagerly
        return {"ms": eager, "noise": eager_noise, "timing": "eager", "graph_error": _short(err)}
    return {"ms": ms, "noise": noise, "timing": "graph", "eager_ms": eager, "eager_noise": eager_noise}


def _timing(result: float | tuple[float, float] | dict[str, Any]) -> dict[str, Any]:
    if isinstance(result, dict):
        return result
    if isinstance(result, tuple):
        ms, noise = result
        return {"ms": float(ms), "noise": float(noise)}
    return {"ms": float(result)}


def compare(got: tuple, ref: tuple, tol: float, T_checked: int, T: int) -> tuple[bool, float, str]:
    """(ok, output error, reason) for outputs ``[B,T,...]`` and final states (only when fully checked)."""
    o, s = got
    ro, rs = ref
    err = rel_err(o[:, :T_checked], ro)
    if not err <= tol:
        return False, err, f"output relative error {err:.2e} > {tol:.0e} vs the reference"
    if T_checked == T and rs is not None and s is not None:
        for i, (a, b) in enumerate(zip(_as_tuple(s), _as_tuple(rs))):
            e = rel_err(a, b)
            if not e <= tol:
                return False, err, f"final state {i} relative error {e:.2e} > {tol:.0e}"
    return True, err, ""


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text if len(text) < 400 else text[:397] + "..."


def run_case(
    case: Case,
    *,
    ceilings: Ceilings,
    device: torch.device | str = "cuda",
    check_T: int = 4096,
    grad_T: int = 128,
    timer: Timer | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """All records of one case (see the module docstring)."""
    device = torch.device(device)
    timer = timer or graph_and_eager_ms
    T = case.shape.T
    Tc = min(T, check_T)
    inputs = case.make_inputs(seed, device)
    t0 = time.perf_counter()
    ref = case.reference(case.slice_T(inputs, Tc) if Tc < T else inputs)
    log(f"[{case.name}] reference on {Tc}/{T} steps: {time.perf_counter() - t0:.1f} s")
    out_bytes = ref[0].numel() // Tc * T * torch.empty((), dtype=case.dtype).element_size()
    B, _, H = case.shape.B, case.shape.T, case.shape.H
    work = Work.of(case.input_bytes(inputs), out_bytes, B * T * H, case.state_elems)
    tol, grad_tol = TOLERANCES[case.dtype]
    base = {
        "case": case.name, "op": case.op, "group": case.group, "x": case.x, "shape": list(case.shape),
        "dtype": str(case.dtype).removeprefix("torch."), "checked_T": Tc, **case.meta,
    }  # fmt: skip
    records: list[dict[str, Any]] = []

    def add(impl: Impl, mode: str, status: str, **kw) -> None:
        rec = {**base, "impl": impl.name, "kind": impl.kind, "mode": mode, "status": status, **kw}
        rec.update(floor_ms(work, ceilings, mode))
        rec["bytes"] = work.bytes_fwd if mode == "fwd" else work.bytes_fwd_bwd
        rec["flops"] = work.flops_fwd if mode == "fwd" else work.flops_fwd_bwd
        records.append(rec)
        what = f"{rec['ms']:.4f} ms" if rec.get("ms") is not None else f"{status} {kw.get('reason', '')}"
        log(f"[{case.name}] {impl.name} {mode}: {what}")

    for impl in case.impls:
        try:
            fn, _ = impl.prepare(inputs, False)
            with torch.no_grad():
                got = fn()
            _sync(device)
        except AnchorAbsent as err:
            for mode in case.modes:
                add(impl, mode, "absent", reason=str(err))
            continue
        except Exception as err:  # a kernel that cannot even run is reported, not fatal
            for mode in case.modes:
                add(impl, mode, "error", reason=_short(err))
            continue
        ok, err, reason = compare(got, ref, tol, Tc, T)
        if not ok:
            status = "wrong" if impl.kind == "ours" else "mismatch"
            for mode in case.modes:
                add(impl, mode, status, err=err, reason=reason)
            continue
        del got
        for mode in case.modes:
            try:
                if mode == "fwd":

                    def fwd(fn=fn):
                        with torch.no_grad():
                            return fn()

                    add(impl, mode, "ok", **_timing(timer(fwd, [])), err=err)
                    continue
                grad_err = None
                if impl.kind == "ours" and case.reference_grads is not None:
                    gok, grad_err, why = _check_grads(case, impl, inputs, min(T, grad_T), grad_tol, device)
                    if not gok:
                        add(impl, mode, "wrong", err=err, grad_err=grad_err, reason=why)
                        continue
                fb, leaves = impl.prepare(inputs, True)
                o0 = fb()[0]
                do = torch.randn_like(o0)
                del o0

                def step(fb=fb, do=do):
                    fb()[0].backward(do)

                add(
                    impl,
                    mode,
                    "ok",
                    **_timing(timer(step, list(leaves.values()))),
                    err=err,
                    grad_err=grad_err,
                )
                del fb, leaves, do
            except Exception as exc:
                add(impl, mode, "error", err=err, reason=_short(exc))
        del fn
    del inputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records


def _check_grads(case: Case, impl: Impl, inputs, Tg: int, tol: float, device) -> tuple[bool, float, str]:
    """Gradients of ours vs the reference's autograd on the first ``Tg`` steps."""
    short = case.slice_T(inputs, Tg)
    fn, leaves = impl.prepare(short, True)
    o, _ = fn()
    gen = torch.Generator(device="cpu").manual_seed(11)
    do = torch.randn(o.shape, generator=gen, dtype=torch.float32).to(device)
    o.float().backward(do)
    ref = case.reference_grads(short, do)
    worst = 0.0
    for name, g_ref in ref.items():
        leaf = leaves.get(name)
        if leaf is None:
            continue
        if leaf.grad is None:
            return False, float("inf"), f"no gradient for {name}"
        e = rel_err(leaf.grad, g_ref)
        worst = max(worst, e)
        if not e <= tol:
            return False, e, f"d{name} relative error {e:.2e} > {tol:.0e} (first {Tg} steps)"
    return True, worst, ""
