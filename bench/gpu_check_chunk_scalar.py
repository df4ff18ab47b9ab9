"""GPU check of the chunked scalar-decay kernels: compile, correctness (fp32, bf16), timing sweep.

Run on the GPU machine from the repository root:

    pip install --no-deps --no-build-isolation -e . -q
    python bench/gpu_check_chunk_scalar.py --out $OUT [--budget 320]

1. decay NONE / SCALAR, read-out after / before, fp32 and bf16: outputs, final state and every
   gradient against ``core_reference`` (fp32) at K=V=128, odd K=100 / V=72, K=V=256 and varlen
   with lengths 0 and 1; a T=65536 SCALAR forward against the reference (no overflow).
2. at B=4 T=4096 H=16 K=V=128 bf16: a forward sweep (chunk, block_v, warps, stages) and a
   backward sweep per program role (dq, dk, dv), each config checked against an fp32 run before
   it is timed; then forward and forward+backward through ``chunk_scalar.run`` with the best.

Without a GPU: ``--smoke`` runs the same path at tiny sizes on the interpreter; ``--aot`` compiles
every swept config for sm_90 (Hopper) on the CPU and records registers, spill stack and shared
memory from the cubin (no timing). Floors (stored with the results): memory = bytes that must
move / 3.0 TB/s; FLOPs of the fused-chunk algorithm / 690 TFLOP/s. Results go to
``<out>/chunk_scalar_gpu.json`` (``chunk_scalar_aot.json``) after every item.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from scandsl.bench._gpu_check import Report
from scandsl.bench._gpu_check import aot_compile as _aot_compile
from scandsl.lowering import chunk_scalar
from scandsl.lowering.chunk_scalar_launch import Plan, bwd_meta, fwd_meta, launch_bwd, launch_fwd
from scandsl.lowering.chunk_scalar_split import _kernels as split_kernels
from scandsl.lowering.chunk_scalar_split import split_meta

from scandsl._core import CoreInputs, CoreSig, Decay, Readout, Shape, core_reference
from scandsl.testing import TOLERANCES, random_core_inputs, rel_err

SIGS = {
    "none": CoreSig(),
    "scalar": CoreSig(decay=Decay.SCALAR),
    "scalar_before": CoreSig(decay=Decay.SCALAR, readout=Readout.BEFORE),
    "none_before": CoreSig(readout=Readout.BEFORE),
}
NAMES = ("q", "k", "v", "g", "initial_state")
B, T, H, K, V = 4, 4096, 16, 128, 128
DEV = "cuda"
LOW = torch.bfloat16  # the 16-bit dtype timed (fp16 in --smoke: the interpreter mangles bf16 dots)
SMOKE = False
ANCHORS = {  # flash-linear-attention 0.6.0 / mamba_ssm on one H100 (shared/design.md), ms
    "none": {"fwd": 0.244, "fwdbwd": 1.30, "ref": "fla chunk_linear_attn"},
    "scalar": {"fwd": 0.392, "fwdbwd": 1.71, "ref": "fla chunk_retention (fwd 0.514 chunk_simple_gla, "
               "mamba_chunk_scan_combined 0.524 / 3.88)"},
}  # fmt: skip
ROLE_BLOCK = {"dq": "bwd_block_k", "dk": "bwd_block_k", "dv": "bwd_block_v"}
ROLE_OUT = {"dq": (0,), "dk": (1,), "dv": (2,)}  # indices into launch_bwd's result; dg (3) needs dk + dv


def _fields() -> dict:
    return {"shape": dict(B=B, T=T, H=H, K=K, V=V, dtype=str(LOW).replace("torch.", "")), "floors": floors()}


def floors() -> dict:
    tensor = B * T * H * K * 2  # one 16-bit [B, T, H, K] tensor, bytes
    c = 64
    per_chunk_fwd = 2 * c * c * K + 2 * c * c * V + 2 * 2 * c * K * V  # scores, S@v, q@h, h update
    per_chunk_bwd = 3 * per_chunk_fwd  # dq, dk, dv roles: about one forward's products each
    chunks = B * H * T // c
    return {
        "mem_fwd_ms": 4 * tensor / 3.0e12 * 1e3,  # q, k, v in, o out
        "mem_fwdbwd_ms": 12 * tensor / 3.0e12 * 1e3,  # + q, k, v, o, do in, dq, dk, dv out
        "flop_fwd_ms": per_chunk_fwd * chunks / 690e12 * 1e3,
        "flop_fwdbwd_ms": (per_chunk_fwd + per_chunk_bwd) * chunks / 690e12 * 1e3,
        "target_scalar_fwd_ms (3x mem floor)": 3 * 4 * tensor / 3.0e12 * 1e3,
    }


# ----------------------------------------------------------------------------- correctness
def _grads(x, o, ht, w, dht):
    named = [(n, getattr(x, n)) for n in NAMES if getattr(x, n) is not None]
    loss = (o.float() * w).sum() + (ht * dht).sum()
    return dict(zip([n for n, _ in named], torch.autograd.grad(loss, [t for _, t in named])))


def check_case(label: str, sig: CoreSig, x: CoreInputs, dtype, grads=True, over: dict | None = None) -> dict:
    """Outputs, final state and every gradient against ``core_reference``; an entry with ``ok``.
    ``over``: config keys on top of the defaults (``{"fwd_mode": "split"}``)."""
    entry: dict = {"case": label, "dtype": str(dtype).replace("torch.", "")}
    tol_out, tol_grad = TOLERANCES[dtype]
    try:
        o, ht = chunk_scalar.run(sig, x, over)
        with torch.no_grad() if not grads else torch.enable_grad():
            ro, rht = core_reference(sig, x)
        errs = {"o": rel_err(o.float(), ro.float()), "final_state": rel_err(ht, rht)}
        if grads:
            gen = torch.Generator(device=DEV).manual_seed(0)
            w = torch.randn(ro.shape, device=DEV, generator=gen)
            dht = torch.randn(rht.shape, device=DEV, generator=gen)
            g_k, g_r = _grads(x, o, ht, w, dht), _grads(x, ro, rht, w, dht)
            errs.update({f"d{n}": rel_err(g_k[n].float(), g_r[n].float()) for n in g_k})
        ok = all(v <= (tol_grad if k.startswith("d") else tol_out) for k, v in errs.items())
        entry.update(ok=ok, errors={k: float(f"{v:.3e}") for k, v in errs.items()})
    except Exception as err:  # a compile failure is a result, not a crash
        entry.update(ok=False, error=f"{type(err).__name__}: {err}"[:2000], tb=traceback.format_exc()[-3000:])
    print(
        label,
        entry["dtype"],
        "OK" if entry["ok"] else "FAIL",
        entry.get("errors", entry.get("error")),
        flush=True,
    )
    return entry


def check(rep: Report, label: str, sig: CoreSig, x: CoreInputs, dtype, grads=True) -> bool:
    entry = check_case(label, sig, x, dtype, grads)
    rep.data.setdefault("correctness", []).append(entry)
    rep.save()
    return entry["ok"]


def correctness(rep: Report) -> dict[str, bool]:
    ok = {name: True for name in SIGS}
    cu = torch.tensor([0, 0, 1, 70, 200, 333], dtype=torch.int32, device=DEV)
    cases = [  # (sig names, label, kwargs); the first is the gate for timing in 16-bit
        (list(SIGS), "T300 K128 V128", dict(B=2, T=300, H=3, K=128, V=128)),
        (["scalar", "none"], "T130 K100 V72", dict(B=1, T=130, H=2, K=100, V=72)),
        (["scalar"], "T67 K256 V256", dict(B=1, T=67, H=1, K=256, V=256)),
        (["scalar", "none"], "varlen 0,1,69,130,133 K64 V64", dict(T=333, H=2, K=64, V=64, cu_seqlens=cu)),
    ]
    if SMOKE:
        cases = [(["scalar", "none_before"], "T37 K24 V40", dict(B=1, T=37, H=1, K=24, V=40))]
    for names, label, kw in cases:
        for name in names:
            for dtype in (torch.float32, LOW):
                if rep.left() < 190:
                    return ok
                x = random_core_inputs(SIGS[name], dtype=dtype, device=DEV, requires_grad=True, **kw)
                passed = check(rep, f"{name} {label}", SIGS[name], x, dtype)
                # timing is gated on every fp32 case and the 16-bit case at the timed feature sizes
                if dtype == torch.float32 or label == cases[0][1]:
                    ok[name] &= passed
    x = random_core_inputs(SIGS["scalar"], B=1, T=30 if SMOKE else 300, H=2, K=128, V=128,
                           dtype=torch.float16, device=DEV, requires_grad=True)  # fmt: skip
    ok["scalar"] &= check(rep, "scalar T300 K128 V128", SIGS["scalar"], x, torch.float16)
    # long sequence: log-decays only enter as exp of non-positive within-chunk differences
    x = random_core_inputs(
        SIGS["scalar"], B=1, T=200 if SMOKE else 65536, H=1, K=64, V=64, device=DEV, seed=4
    )
    ok["scalar"] &= check(rep, "scalar T65536 K64 V64 fwd", SIGS["scalar"], x, torch.float32, grads=False)
    return ok


# ----------------------------------------------------------------------------- sweeps
def target_inputs(sig: CoreSig, dtype=None, requires_grad=False):
    dtype = dtype or LOW
    gen = torch.Generator(device=DEV).manual_seed(0)
    r = lambda *s, scale=1.0: (torch.randn(*s, device=DEV, generator=gen) * scale).to(dtype)
    q, k, v = r(B, T, H, K), r(B, T, H, K, scale=K**-0.5), r(B, T, H, V)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=DEV, generator=gen) + 3.0)
    g = g if sig.decay is Decay.SCALAR else None
    for t in (q, k, v, g):
        if t is not None:
            t.requires_grad_(requires_grad)
    return CoreInputs(q=q, k=k, v=v, g=g, scale=K**-0.5)


def target_do() -> torch.Tensor:
    gen = torch.Generator(device=DEV).manual_seed(1)
    return torch.randn(B, T, H, V, device=DEV, generator=gen).to(LOW)


def base_config(sig: CoreSig) -> dict:
    return chunk_scalar.default_config(sig, Shape(B, T, H, K, V))


def plan_for(sig, cfg) -> Plan:
    return Plan(sig, cfg, B, T, H, K, V, B, False, K**-0.5)


def bench(fn, rep_ms=40, warmup=10, grad_to_none=None) -> float:
    if SMOKE:  # no CUDA events on the CPU: one timed call is enough to exercise the path
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep_ms, grad_to_none=grad_to_none))


def truth(name: str):
    """fp32-input kernel run (checked against the reference above) on the 16-bit inputs."""
    sig, x, do = SIGS[name], target_inputs(SIGS[name]), target_do()
    f = lambda t: None if t is None else t.float()
    P = plan_for(sig, chunk_scalar.default_config(sig, Shape(B, T, H, K, V), dtype=torch.float32))
    o, _ = launch_fwd(P, f(x.q), f(x.k), f(x.v), x.g, None, None, torch.float32, False)
    grads = launch_bwd(P, f(x.q), f(x.k), f(x.v), x.g, o, None, None, None, f(do), None)
    return o, [f(t) for t in grads]


# ----------------------------------------------------------------------------- isolated tasks
# A CUDA fault (illegal address) poisons the whole process, so every GPU task of the sweep runs in
# a worker subprocess: a fault costs that task and a restart, never the rest of the run.
WORK = Path(tempfile.gettempdir()) / "chunk_scalar_work"


@functools.cache
def _inputs(name: str):
    """Inputs, output gradient, and the output the backward reads (from the fp32 truth when there is
    one, so that a faulting forward config cannot take the backward sweep down with it)."""
    sig = SIGS[name]
    x, do = target_inputs(sig), target_do()
    path = WORK / f"truth_{name}_{K}_{V}.pt"
    if path.exists():
        o = torch.load(path, map_location=DEV)[0].to(LOW)
    else:
        o = launch_fwd(plan_for(sig, base_config(sig)), x.q, x.k, x.v, x.g, None, None, LOW, False)[0]
    return x, do, o


@functools.cache
def _truth(name: str):
    path = WORK / f"truth_{name}_{K}_{V}.pt"
    return torch.load(path, map_location=DEV) if path.exists() else None


def task_truth(name: str) -> dict:
    """fp32-input kernel run (checked against the reference by the correctness cases) on the 16-bit
    inputs, saved for the sweep tasks to compare against."""
    sig, (x, do, _) = SIGS[name], _inputs(name)
    f = lambda t: None if t is None else t.float()
    P = plan_for(sig, chunk_scalar.default_config(sig, Shape(B, T, H, K, V), dtype=torch.float32))
    o, _ = launch_fwd(P, f(x.q), f(x.k), f(x.v), x.g, None, None, torch.float32, False)
    grads = launch_bwd(P, f(x.q), f(x.k), f(x.v), x.g, o, None, None, None, f(do), None)
    WORK.mkdir(parents=True, exist_ok=True)
    torch.save((o, [f(t) for t in grads]), WORK / f"truth_{name}_{K}_{V}.pt")
    return {"ok": bool(torch.isfinite(o).all())}


def task_probe(name: str, what: str, dtype: str, over: dict, shape: list[int]) -> dict:
    """One launch at ``shape`` (B, T, H, K, V), synchronised: does it fault, is it finite?"""
    sig, (b, t, h, k, v) = SIGS[name], shape
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    gen = torch.Generator(device=DEV).manual_seed(0)
    r = lambda *sz: torch.randn(*sz, device=DEV, generator=gen).to(dt)
    q, kk, vv, do = r(b, t, h, k), r(b, t, h, k) * k**-0.5, r(b, t, h, v), r(b, t, h, v)
    g = torch.nn.functional.logsigmoid(torch.randn(b, t, h, device=DEV, generator=gen) + 3.0)
    g = g if sig.decay is Decay.SCALAR else None
    cfg = {**chunk_scalar.default_config(sig, Shape(b, t, h, k, v), dtype=dt), **over}
    P = Plan(sig, cfg, b, t, h, k, v, b, False, k**-0.5)
    o, _ = launch_fwd(P, q, kk, vv, g, None, None, dt, False)
    outs = [o]
    if what == "bwd":
        outs += [x for x in launch_bwd(P, q, kk, vv, g, o, None, None, None, do, None) if x is not None]
    if DEV == "cuda":
        torch.cuda.synchronize()
    return {"ok": True, "finite": all(bool(torch.isfinite(x).all()) for x in outs)}


def task_sweep(name: str, launch: str, over: dict) -> dict:
    """launch: "fwd", or a backward launch of roles joined by "+" ("dq", "dq+dk+dv")."""
    sig, (x, do, o) = SIGS[name], _inputs(name)
    ref = _truth(name)
    P = plan_for(sig, {**base_config(sig), **over})
    if launch == "fwd":
        fn = lambda: launch_fwd(P, x.q, x.k, x.v, x.g, None, None, LOW, False)
        got = [fn()[0]]
        want = None if ref is None else [ref[0]]
    else:
        roles = tuple(launch.split("+"))
        fn = lambda: launch_bwd(P, x.q, x.k, x.v, x.g, o, None, None, None, do, None, roles=roles)
        res = fn()
        idx = sorted({i for r in roles for i in ROLE_OUT[r]} | ({3} if {"dk", "dv"} <= set(roles) else set()))
        idx = [i for i in idx if res[i] is not None]
        got = [res[i] for i in idx]
        want = None if ref is None else [ref[1][i] for i in idx]
    if want is None:  # no fp32 truth (it faulted): at least finite
        ok = all(bool(torch.isfinite(t).all()) for t in got)
        errs = ["unchecked: no fp32 truth"]
    else:
        errs = [rel_err(a.float(), b) for a, b in zip(got, want)]
        ok = max(errs) <= 2e-2
    if not ok:
        return {"ok": False, "wrong": errs}
    return {"ok": True, "ms": round(bench(fn), 4), "errs": errs}


def task_timing(name: str, cfg: dict, what: str) -> dict:
    """``what``: "fwd" (no grad) or "fwdbwd" (autograd), through ``chunk_scalar.run``."""
    sig = SIGS[name]
    x = target_inputs(sig, requires_grad=what == "fwdbwd")
    do = target_do()
    inputs = [t for t in (x.q, x.k, x.v, x.g) if t is not None]

    def fwd():
        with torch.no_grad():
            return chunk_scalar.run(sig, x, cfg)

    def fwdbwd():
        o, _ = chunk_scalar.run(sig, x, cfg)
        torch.autograd.backward(o, do)

    if what == "fwd":
        return {"ok": True, "ms": bench(fwd, warmup=20, rep_ms=200)}
    return {"ok": True, "ms": bench(fwdbwd, warmup=10, rep_ms=200, grad_to_none=inputs)}


def task_sanitize(task: dict) -> dict:
    """Re-run one faulting task under compute-sanitizer (when the machine has it)."""
    tool = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    if not Path(tool).exists():
        return {"ok": False, "error": "no compute-sanitizer on this machine"}
    WORK.mkdir(parents=True, exist_ok=True)
    tasks_path, results_path = WORK / "sanitize_tasks.json", WORK / "sanitize_results.jsonl"
    tasks_path.write_text(json.dumps([task]))
    results_path.write_text("")
    cmd = [tool, "--print-limit", "3", sys.executable, __file__, "--out", str(WORK), "--kv", f"{K},{V}",
           "--worker", str(tasks_path), "--results", str(results_path)]  # fmt: skip
    try:
        proc = subprocess.run(cmd, timeout=45, capture_output=True, text=True)
        return {"ok": True, "report": (proc.stdout + proc.stderr)[:4000]}
    except subprocess.TimeoutExpired as err:
        return {"ok": False, "error": "timed out", "report": str(err.stdout or "")[:4000]}


def task_check(name: str, label: str, kw: dict, dtype: str, over: dict | None = None) -> dict:
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    kw = dict(kw)
    if "cu_seqlens" in kw:  # JSON carries the list
        kw["cu_seqlens"] = torch.tensor(kw["cu_seqlens"], dtype=torch.int32, device=DEV)
    x = random_core_inputs(SIGS[name], dtype=dt, device=DEV, requires_grad=True, **kw)
    return check_case(label, SIGS[name], x, dt, over=over)


TASKS = {"truth": task_truth, "probe": task_probe, "sweep": task_sweep, "timing": task_timing,
         "check": task_check}  # fmt: skip


def worker_main(tasks_path: Path, results_path: Path, start: int) -> None:
    tasks = json.loads(tasks_path.read_text())
    with results_path.open("a") as log:
        for i in range(start, len(tasks)):
            log.write(json.dumps({"i": i, "started": True}) + "\n")
            log.flush()
            task = dict(tasks[i])
            fatal = False
            try:
                res = TASKS[task.pop("kind")](**task)
            except Exception as err:
                text = f"{type(err).__name__}: {err}"
                res = {"ok": False, "error": text[:600], "tb": traceback.format_exc()[-1500:]}
                fatal = "illegal" in text or "CUDA error" in text or "Triton Error [CUDA]" in text
            log.write(json.dumps({"i": i, **res}) + "\n")
            log.flush()
            if fatal:  # this process's CUDA context is gone
                sys.exit(3)


def run_isolated(rep: Report, label: str, tasks: list[dict], env: dict | None = None) -> list[dict]:
    """Run ``tasks`` in worker subprocesses, restarting after a fault; results in task order."""
    WORK.mkdir(parents=True, exist_ok=True)
    tasks_path, results_path = WORK / f"{label}_tasks.json", WORK / f"{label}_results.jsonl"
    tasks_path.write_text(json.dumps(tasks))
    results_path.write_text("")
    results: dict[int, dict] = {}
    start = 0
    while start < len(tasks) and rep.left() > 8:
        cmd = [sys.executable, __file__, "--out", str(WORK), "--kv", f"{K},{V}", "--worker", str(tasks_path),
               "--results", str(results_path), "--start", str(start)] + (["--smoke"] if SMOKE else [])  # fmt: skip
        try:
            proc = subprocess.run(cmd, timeout=max(rep.left(), 1), env={**os.environ, **(env or {})},
                                  capture_output=True, text=True)  # fmt: skip
            rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-800:]
        except subprocess.TimeoutExpired:
            rc, tail = -9, "timed out"
        seen = -1
        for line in results_path.read_text().splitlines():
            entry = json.loads(line)
            seen = max(seen, entry["i"])
            if not entry.get("started"):
                results[entry["i"]] = entry
        if seen >= 0 and seen not in results:
            results[seen] = {"i": seen, "ok": False, "error": f"worker died (rc {rc})", "tail": tail}
        if rc != 0 and seen < start:  # died before its first task: do not spin
            results[start] = {
                "i": start,
                "ok": False,
                "error": f"worker failed to start (rc {rc})",
                "tail": tail,
            }
            seen = start
        start = max(seen + 1, start + (rc != 0))
        if rc == 0:
            break
    out = []
    for i, task in enumerate(tasks):
        res = results.get(i, {"ok": False, "error": "not run (budget)"})
        res.pop("i", None)
        out.append(res)
        rep.put(label, json.dumps(task, sort_keys=True), res)
    return out


def fwd_configs() -> list[dict]:
    if SMOKE:
        return [{"chunk": 16, "block_v": 16}, {"chunk": 32, "block_v": 32}]
    grid = itertools.product((32, 64), (4, 8), (2, 1, 3))
    return [{"chunk": 64, "block_v": bv, "num_warps": w, "num_stages": s} for bv, w, s in grid]


def bwd_configs(role: str) -> list[dict]:
    key = ROLE_BLOCK[role]
    if SMOKE:
        return [{"bwd_chunk": 16, "bwd_num_warps": 4, "bwd_num_stages": 2, key: b} for b in (16, 32)]
    grid = itertools.product((32, 64), (4, 8), (1, 2))
    return [{"bwd_chunk": 64, "bwd_num_warps": w, "bwd_num_stages": s, key: b} for b, w, s in grid]


def ranked(tasks: list[dict], results: list[dict]) -> list[tuple[float, dict]]:
    good = [(r["ms"], t["over"]) for t, r in zip(tasks, results) if r.get("ok") and "ms" in r]
    return sorted(good, key=lambda p: p[0])


def sweep_phase(
    rep: Report, name: str, launches: dict[str, list[dict]]
) -> dict[str, list[tuple[float, dict]]]:
    """Every config of every launch kind, isolated; per kind the checked ones, fastest first."""
    tasks = [
        {"kind": "sweep", "name": name, "launch": k, "over": o} for k, cfgs in launches.items() for o in cfgs
    ]
    results = run_isolated(rep, f"sweep {name} {'+'.join(launches)}", tasks)
    out = {}
    for k in launches:
        sel = [(t, r) for t, r in zip(tasks, results) if t["launch"] == k]
        out[k] = ranked([t for t, _ in sel], [r for _, r in sel])
    return out


def choose_bwd(rep: Report, roles: dict[str, list[tuple[float, dict]]]) -> dict:
    """One launch holding the role leaders against three launches (sharing the slowest's warps)."""
    if not all(roles.get(r) for r in ("dq", "dk", "dv")):
        return {}
    split_ms = sum(roles[r][0][0] for r in ("dq", "dk", "dv"))
    rep.put("bwd", "three launches: sum of the role bests (ms)", split_ms)
    slowest = max(("dq", "dk", "dv"), key=lambda r: roles[r][0][0])
    split = {**roles["dv"][0][1], **roles["dk"][0][1], **roles[slowest][0][1], "bwd_fused": False}
    fused = []
    for (_, a), (_, b), (_, c) in itertools.product(roles["dq"][:2], roles["dk"][:2], roles["dv"][:2]):
        if a["bwd_block_k"] == b["bwd_block_k"]:
            cfgs = (a, b, c)
            warps = max(x["bwd_num_warps"] for x in cfgs)
            stages = min(x["bwd_num_stages"] for x in cfgs)
            fused.append({**a, **c, "bwd_num_warps": warps, "bwd_num_stages": stages, "bwd_fused": True})
    fused = [dict(f) for f in {tuple(sorted(f.items())) for f in fused}]
    best_fused = sweep_phase(rep, "scalar", {"dq+dk+dv": fused})["dq+dk+dv"]
    if best_fused and best_fused[0][0] <= split_ms:
        return best_fused[0][1]
    return split


def time_configs(rep: Report, label: str, best: dict[str, dict]) -> None:
    """Forward and forward+backward through ``chunk_scalar.run``, one isolated task each."""
    names = [n for n in ("scalar", "none", "scalar_before") if n.replace("_before", "") in best]
    cfgs = {n: {**base_config(SIGS[n]), **best[n.replace("_before", "")]} for n in names}
    tasks = [
        {"kind": "timing", "name": n, "cfg": cfgs[n], "what": w} for n in names for w in ("fwd", "fwdbwd")
    ]
    for t, res in zip(tasks, run_isolated(rep, f"{label} runs", tasks)):
        entry = rep.data.setdefault(label, {}).setdefault(t["name"], {"config": t["cfg"]})
        entry[f"{t['what']}_ms"] = res.get("ms", res.get("error"))
        entry["anchor"] = ANCHORS.get(t["name"].replace("_before", ""))
    rep.save()


def gpu_main(rep: Report, full_correctness: bool, quick: bool) -> None:
    print("floors", rep.data["floors"], flush=True)
    if quick:  # probes and the default tiles first; correctness from an earlier full run of the same kernels
        ok = {"scalar": True, "none": True, "scalar_before": True}
        rep.put("correct", "gate", "skipped (--quick): see the full correctness run of the same kernels")
    elif full_correctness:
        ok = correctness(rep)
    else:  # the timed feature sizes only (the full matrix: --full-correctness)
        kw = dict(B=2, T=300, H=3, K=128, V=128) if not SMOKE else dict(B=1, T=37, H=1, K=24, V=40)
        tasks = [{"kind": "check", "name": n, "label": f"{n} {kw}", "kw": kw, "dtype": d}
                 for n in ("scalar", "none") for d in ("fp32", "bf16" if not SMOKE else "fp16")]  # fmt: skip
        res = run_isolated(rep, "correctness", tasks)
        ok = {n: all(r.get("ok") for t, r in zip(tasks, res) if t["name"] == n) for n in ("scalar", "none")}
        ok["scalar_before"] = ok["scalar"]
    rep.put("correct", "gate", ok)
    # where, if anywhere, does the timed shape fault? CUDA_LAUNCH_BLOCKING pins a fault on its launch
    tgt, odd_h, odd_t = [B, T, H, K, V], [B, T, H - 1, K, V], [B, T - 1, H, K, V]
    probes = [("scalar", "fwd", "bf16", {}, tgt), ("scalar", "fwd", "bf16", {"num_stages": 1}, tgt),
              ("scalar", "fwd", "fp32", {}, tgt), ("scalar", "bwd", "bf16", {}, tgt),
              ("scalar", "bwd", "fp32", {}, tgt), ("scalar", "fwd", "bf16", {"num_stages": 1}, odd_h),
              ("scalar", "bwd", "bf16", {}, odd_t)][: 4 if quick else 7]  # fmt: skip
    probe_tasks = [dict(kind="probe", name=n, what=w, dtype=d, over=o, shape=sh) for n, w, d, o, sh in probes]
    probe_res = run_isolated(
        rep, "probe", probe_tasks[:2] if SMOKE else probe_tasks, env={"CUDA_LAUNCH_BLOCKING": "1"}
    )
    faulted = [t for t, r in zip(probe_tasks, probe_res) if not r.get("ok")]
    if faulted and not SMOKE:
        rep.put("sanitizer", json.dumps(faulted[0], sort_keys=True), task_sanitize(faulted[0]))
    if quick:
        time_configs(rep, "timing (default tiles)", {"scalar": {}, "none": {}})
    run_isolated(rep, "truth", [{"kind": "truth", "name": n} for n in ("scalar", "none")])
    best: dict[str, dict] = {}
    scalar_fwd: list[tuple[float, dict]] = []
    roles: dict[str, list[tuple[float, dict]]] = {}
    if ok["scalar"]:
        sw = sweep_phase(
            rep, "scalar", {"fwd": fwd_configs(), **{r: bwd_configs(r) for r in ("dq", "dk", "dv")}}
        )
        scalar_fwd, roles = sw["fwd"], {r: sw[r] for r in ("dq", "dk", "dv")}
    if ok["none"]:  # NONE: the few best SCALAR forward tiles (and the SCALAR backward tiles)
        top = [c for _, c in scalar_fwd[:3]] or fwd_configs()[:3]
        none_fwd = sweep_phase(rep, "none", {"fwd": top})["fwd"]
        best["none"] = none_fwd[0][1] if none_fwd else {}
    if ok["scalar"]:
        best["scalar"] = scalar_fwd[0][1] if scalar_fwd else {}
    bwd_cfg = choose_bwd(rep, roles) if rep.left() > 60 else {}
    for name in best:
        best[name] = {**best[name], **bwd_cfg}
        rep.put("best", name, best[name])
    time_configs(rep, "timing", best)
    print(json.dumps({k: rep.data.get(k) for k in ("best", "timing", "floors", "correct")}, indent=1))


# ----------------------------------------------------------------------------- ahead of time
def aot_compile(kernel, meta: dict, dtype: str, ptrs: dict | None = None) -> dict:
    """sm_90 compile of a chunk_scalar kernel with 16-bit tensors of ``dtype`` (``ptrs`` overrides)."""
    fp32_ptrs = {"g", "dg", "h0", "ht", "dht", "dh0"}
    fixed = {"cu_seqlens": "*i32", "scale": "fp32", "T": "i32", "H": "i32", "NTH": "i32", **(ptrs or {})}

    def arg_type(name: str) -> str:
        return fixed.get(name) or ("*fp32" if name in fp32_ptrs else f"*{dtype}")

    return _aot_compile(kernel, meta, arg_type, int_args=("T", "H", "NTH"))

def aot_main(rep: Report) -> None:
    for name in ("scalar", "none"):
        sig = SIGS[name]
        for over in fwd_configs():
            P = plan_for(sig, {**base_config(sig), **over})
            _, meta = fwd_meta(P, has_h0=False, store_ht=False)
            key = json.dumps(over, sort_keys=True)
            try:
                rep.put(f"aot {name} fwd", key, aot_compile(P.kernels.chunk_scalar_fwd, meta, "bf16"))
            except Exception as err:
                rep.put(f"aot {name} fwd", key, f"{type(err).__name__}: {str(err)[:300]}")
            print("aot", name, "fwd", key, rep.data[f"aot {name} fwd"][key], flush=True)
        for role in ("dq", "dk", "dv", "dq+dk+dv"):
            configs = bwd_configs(role) if role != "dq+dk+dv" else [base_config(sig)]
            for over in configs:
                P = plan_for(sig, {**base_config(sig), **over})
                _, meta = bwd_meta(P, tuple(role.split("+")), has_h0=False, has_dht=False)
                key = json.dumps({k: over[k] for k in over if k.startswith("bwd_")}, sort_keys=True)
                try:
                    rep.put(f"aot {name} {role}", key, aot_compile(P.kernels.chunk_scalar_bwd, meta, "bf16"))
                except Exception as err:
                    rep.put(f"aot {name} {role}", key, f"{type(err).__name__}: {str(err)[:300]}")
                print("aot", name, role, key, rep.data[f"aot {name} {role}"][key], flush=True)


# ----------------------------------------------------------------------------- fwd_mode="split"
# Variants of the split forward timed against the default (fused) forward, on top of the defaults.
SPLIT_VARIANTS = [
    {"fwd_mode": "split"},
    {"fwd_mode": "split", "split_state": "input"},
    {"fwd_mode": "split", "split_state": "input", "block_v": 64},
    {"fwd_mode": "split", "split_state": "input", "block_v": 128, "num_warps": 8},
    {"fwd_mode": "split", "split_state": "input", "split_block_k": 64, "split_block_v": 64},
    {"fwd_mode": "split", "split_state": "input", "split_block_k": 64, "split_block_v": 32},
    {"fwd_mode": "split", "split_state": "fp32", "split_block_k": 64, "split_block_v": 64},
]


def split_main(rep: Report) -> None:
    """Correctness of fwd_mode="split" (fp32, bf16, varlen), then forward and forward+backward
    timings of every SPLIT_VARIANTS entry beside the default fused forward, same process and inputs."""
    sm = SMOKE
    kw = dict(B=2, T=300, H=3, K=128, V=128) if not sm else dict(B=1, T=37, H=1, K=24, V=40)
    cu = [0, 0, 1, 70, 200, 333] if not sm else [0, 0, 1, 6, 37]
    vkw = dict(T=cu[-1], H=2, K=64 if not sm else 24, V=64 if not sm else 40, cu_seqlens=cu)
    low = "bf16" if not sm else "fp16"
    checks = [dict(kind="check", name=n, label=f"split {n} {lab}", kw=k, dtype=d, over=SPLIT_VARIANTS[i])
              for n in ("scalar", "none", "scalar_before") for lab, k in (("dense", kw), ("varlen", vkw))
              for d in ("fp32", low) for i in (0, 1)]  # fmt: skip
    checks.append(dict(kind="check", name="scalar", label="split scalar K-blocks", kw=kw, dtype=low,
                       over={**SPLIT_VARIANTS[4]}))  # fmt: skip
    res = run_isolated(rep, "split correctness", checks)
    ok = all(r.get("ok") for r in res)
    rep.put("split", "correct", ok)
    tasks = []
    for name in ("none", "scalar", "scalar_before"):
        base = base_config(SIGS[name])
        for what in ("fwd", "fwdbwd"):
            variants = [{}] + (SPLIT_VARIANTS if what == "fwd" else SPLIT_VARIANTS[:2])
            tasks += [dict(kind="timing", name=name, cfg={**base, **v}, what=what) for v in variants]
    for t, r in zip(tasks, run_isolated(rep, "split timing", tasks)):
        base = base_config(SIGS[t["name"]])
        mode = {k: v for k, v in t["cfg"].items() if v != base.get(k)}  # {} is the default (fused)
        rep.data.setdefault("split summary", {}).setdefault(f"{t['name']} {t['what']}", []).append(
            {"over": mode, "ms": r.get("ms", r.get("error"))}
        )
    rep.put("floors", "note", "mamba2 fwd memory floor 0.089 ms at B4 T4096 H16 K=V=128 bf16")
    rep.save()
    print(json.dumps({"correct": ok, "summary": rep.data.get("split summary")}, indent=1))


def aot_split(rep: Report) -> None:
    """sm_90 compile of the split kernels (state pass, output kernel) for each variant."""
    for name in ("scalar", "none"):
        sig = SIGS[name]
        for over in SPLIT_VARIANTS:
            P = plan_for(sig, {**base_config(sig), **over})
            h_meta, o_meta = split_meta(P)
            mods = split_kernels(sig, "ieee")
            h_meta = {**h_meta, "HAS_H0": False, "STORE_HT": False}
            hs = "*fp32" if over.get("split_state", "fp32") == "fp32" else "*bf16"
            ptrs = {"hs": hs, "chunk_seq": "*i32", "chunk_loc": "*i32", "chunk_off": "*i32"}
            for kname, kern, meta in (
                ("fwd_h", mods.chunk_scalar_fwd_h, h_meta),
                ("fwd_o", mods.chunk_scalar_fwd_o, o_meta),
            ):
                key = json.dumps(over, sort_keys=True)
                try:
                    result = aot_compile(kern, meta, "bf16", ptrs)
                    rep.put(f"aot {name} split {kname}", key, result)
                except Exception as err:
                    rep.put(f"aot {name} split {kname}", key, f"{type(err).__name__}: {str(err)[:300]}")
                print("aot", name, kname, key, rep.data[f"aot {name} split {kname}"][key], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=320.0)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU interpreter")
    ap.add_argument("--aot", action="store_true", help="compile the sweeps for sm_90 on the CPU")
    ap.add_argument("--kv", default="128,128", help="K,V of the swept shape (default 128,128)")
    ap.add_argument("--full-correctness", action="store_true", help="the whole correctness matrix first")
    ap.add_argument("--quick", action="store_true", help="no correctness; probes and default tiles first")
    ap.add_argument("--split", action="store_true", help="only fwd_mode='split' vs the default (fused)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: run isolated tasks
    ap.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global B, T, H, K, V, DEV, LOW, SMOKE
    K, V = (int(n) for n in args.kv.split(","))
    if args.smoke:
        B, T, H, K, V, DEV, LOW, SMOKE = 1, 40, 2, 32, 32, "cpu", torch.float16, True
    if args.worker:
        worker_main(args.worker, args.results, args.start)
        return
    if args.aot:
        rep = Report(args.out / "chunk_scalar_aot.json", 1e9, "none: sm_90 ahead-of-time compile", **_fields())
        aot_split(rep) if args.split else aot_main(rep)
        return
    device = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (interpreter smoke run)"
    if args.split:
        split_main(Report(args.out / "chunk_scalar_split_gpu.json", args.budget, device, **_fields()))
        return
    gpu_main(
        Report(args.out / "chunk_scalar_gpu.json", args.budget, device, **_fields()), args.full_correctness, args.quick
    )


if __name__ == "__main__":
    main()
