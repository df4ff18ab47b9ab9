"""Per-kernel GPU time of one op call, forward and backward, from the torch profiler.

Where does a slow op spend its time? This runs ``scandsl.ops.<op>`` (after a warm-up that
compiles everything) under ``torch.profiler`` a few times and sums the device time of every
kernel by name, forward and backward separately, so two layouts of the same tokens (a packed
varlen batch against one dense sequence, issue 9) or two configs can be set side by side::

    python3 bench/gpu_profile.py --op gla --shape 1,65536,16,128,128 --docs 40 --out $OUT/prof.json
    python3 bench/gpu_profile.py --op gla --shape 1,65536,16,128,128 --out $OUT/prof.json   # dense

Several runs append to the same JSON (keyed by a label).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from scandsl.bench._cases import random_cu_seqlens
from scandsl.bench._inputs import make_op_inputs, op_spec

from scandsl._core import Shape


def _kernel_times(prof) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            out[ev.name] += ev.device_time_total / 1e3  # ms
    return dict(out)


def kernel_ms(fn, reps: int = 3, name_width: int | None = None) -> dict[str, float]:
    """Device ms per call of every kernel ``fn`` launches (a warm-up call first, then ``reps``
    under the torch profiler), slowest first; names cut at ``name_width`` characters if given."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out: dict[str, float] = defaultdict(float)
    for name, ms in _kernel_times(prof).items():
        if name_width is not None and len(name) >= name_width:
            name = name[:name_width] + "..."
        out[name] += ms / reps
    return {k: round(v, 4) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def profile(
    op: str, shape: Shape, strategy: str, docs: int | None, reps: int = 3, anchor: str | None = None
) -> dict:
    """``anchor`` (e.g. ``fla.chunk_gla``) profiles that anchor's call on the same inputs instead."""
    fn, _ = op_spec(op)
    dev = torch.device("cuda")
    args = make_op_inputs(op, shape, torch.bfloat16, dev, seed=0)
    cu = None if docs is None else random_cu_seqlens(shape.T, docs, 2, dev)
    leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in args.items()}

    def fwd():
        return fn(**leaves, strategy=strategy, cu_seqlens=cu)

    if anchor is not None:
        from scandsl.bench._anchors import ANCHORS, Opts

        (found,) = [a for a in ANCHORS if a.name == anchor and a.op == op]
        fwd, _ = found.prepare(args, Opts(scale=shape.K**-0.5, initial_state=None, output_final_state=False,
                                          requires_grad=True))  # fmt: skip

    o = fwd()
    o = o[0] if isinstance(o, tuple) else o
    do = torch.randn_like(o)
    phases = ("fwd",) if anchor else ("fwd", "bwd")  # an anchor's backward may refuse this Triton
    if anchor is None:
        o.backward(do)  # warm-up: compiles every kernel
    fwd()
    torch.cuda.synchronize()
    result = {}
    for phase in phases:
        outs = [fwd() for _ in range(reps)] if phase == "bwd" else None
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for i in range(reps):
                if phase == "fwd":
                    fwd()
                else:
                    y = outs[i][0] if isinstance(outs[i], tuple) else outs[i]
                    y.backward(do)
            torch.cuda.synchronize()
        times = {k: round(v / reps, 4) for k, v in sorted(_kernel_times(prof).items(), key=lambda kv: -kv[1])}
        result[phase] = {"total_ms": round(sum(times.values()), 4), "kernels": times}
    if anchor is None:
        result["walls"] = _walls(fwd, do)
    return result


def _walls(fwd, do, reps: int = 10) -> dict[str, list[float]]:
    """Per call, ms: host time to issue fwd+bwd (from an idle device), and device time between
    events around it. Kernel sums above minus ``device`` is time the device sat idle inside the
    call (host syncs, allocator growth)."""
    host, device, fwd_host, fwd_device = [], [], [], []
    for _ in range(reps):  # the forward alone: is the op's forward time the device's or the host's?
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        fwd()
        end.record()
        fwd_host.append(round((time.perf_counter() - t0) * 1e3, 3))
        end.synchronize()
        fwd_device.append(round(start.elapsed_time(end), 3))
    for _ in range(reps):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        y = fwd()
        (y[0] if isinstance(y, tuple) else y).backward(do)
        end.record()
        host.append(round((time.perf_counter() - t0) * 1e3, 3))
        end.synchronize()
        device.append(round(start.elapsed_time(end), 3))
    return {"host_ms": host, "device_ms": device, "fwd_host_ms": fwd_host, "fwd_device_ms": fwd_device}


def host_profile(fwd, calls: int = 300, top: int = 30) -> str:
    """cProfile of ``calls`` forward calls (grad enabled, as the op is used in training): where the
    host's time per call goes, Triton's launcher and PyTorch's dispatch included."""
    import cProfile
    import io
    import pstats

    for _ in range(20):
        fwd()
    torch.cuda.synchronize()
    pr = cProfile.Profile()
    t0 = time.perf_counter()
    pr.enable()
    for _ in range(calls):
        fwd()
    pr.disable()
    per_call = (time.perf_counter() - t0) / calls * 1e3
    torch.cuda.synchronize()
    buf = io.StringIO()
    stats = pstats.Stats(pr, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return f"host ms per forward call under cProfile: {per_call:.3f}\n" + buf.getvalue()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", required=True)
    ap.add_argument("--shape", required=True, help="B,T,H,K,V")
    ap.add_argument("--strategy", default="chunk")
    ap.add_argument(
        "--docs", type=int, default=None, help="packed batch of this many documents (B must be 1)"
    )
    ap.add_argument("--anchor", default=None, help="profile this anchor (e.g. fla.chunk_gla) instead of ours")
    ap.add_argument(
        "--host",
        action="store_true",
        help="also cProfile the forward's host path (host_profile.txt beside --out)",
    )
    ap.add_argument("--label", default=None)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    shape = Shape(*(int(s) for s in a.shape.split(",")))
    label = a.label or f"{a.anchor or a.op + '.' + a.strategy}.{a.shape}" + (
        f".docs{a.docs}" if a.docs else ""
    )
    res = profile(a.op, shape, a.strategy, a.docs, anchor=a.anchor)
    if a.host:
        fn, _ = op_spec(a.op)
        args = make_op_inputs(a.op, shape, torch.bfloat16, torch.device("cuda"), seed=0)
        leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in args.items()}
        text = host_profile(lambda: fn(**leaves, strategy=a.strategy))
        with open(Path(a.out).with_name("host_profile.txt"), "a") as fh:
            fh.write(f"=== {label}\n{text}\n")
        print(text.splitlines()[0])
    path = Path(a.out)
    data = json.loads(path.read_text()) if path.exists() else {"device": torch.cuda.get_device_name()}
    data[label] = res
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    print(f"{label} walls: {res.get('walls')}")
    for phase in ("fwd", "bwd")[: 1 if a.anchor else 2]:
        r = res[phase]
        print(f"{label} {phase}: {r['total_ms']:.3f} ms")
        for k, v in list(r["kernels"].items())[:8]:
            print(f"    {v:8.3f}  {k[:100]}")


if __name__ == "__main__":
    main()
