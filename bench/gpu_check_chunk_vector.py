"""GPU check of the chunked vector-decay kernels: compile, correctness (fp32 + bf16), timing.

Run on the GPU machine from the repository root:

    pip install --no-deps --no-build-isolation -e . -q
    python bench/gpu_check_chunk_vector.py --out $OUT [--budget 330] [--no-sweep] [--config JSON]

``--smoke`` runs the same script on the CPU under the Triton interpreter with tiny shapes and
fp16 in place of bf16 (the interpreter's bf16 tl.dot is broken), to check the script itself.

1. warm-up: every (signature, dtype, shape, config) this script runs is compiled first, in
   parallel worker processes sharing Triton's disk cache (compiling is the slow part);
2. correctness against ``core_reference`` (outputs, final state, every gradient): fp32 and
   bf16 for decay key / key-before / value / outer, K=24 V=40, varlen with lengths 0 and 1,
   and strong decays (log-decay in [-8, -5]) at T = 65536;
3. timing at B=4 T=4096 H=16 K=V=128 bf16 (gk fp32) for key and key-before: forward and
   forward+backward with the default config; a per-kernel tile sweep (each variant's outputs
   are checked against the default's before it is timed); the combination of the fastest
   variants; the chunk sizes 32 and 128;
4. ``dqk_mode="shared_scores"`` beside the default: correctness (key / outer, fp32 + bf16, and
   its varlen) and, at the timing shape, fwd+bwd and the dq/dk kernels (chunk_bwd_da +
   chunk_bwd_dqk_shared against chunk_bwd_dqk, outputs checked against the default's) over a
   few ``da_BV`` / ``da_warps`` / ``dqk_BV`` variants (``SHARED``), and ``dqk_mode="split"`` (intra
   kernel per sub-chunk + inter kernel per chunk) in the same table (``SPLIT``).

Timings are not reported for a signature whose correctness failed. Results go to
``<out>/chunk_vector.json``, rewritten after every item so a timeout keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from pathlib import Path

SMOKE = "--smoke" in sys.argv  # spawned workers see the parent's argv too
AOT = "--aot" in sys.argv  # compile only, for sm_90, on a machine without a GPU
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scandsl.bench._gpu_check import Report  # noqa: E402
from scandsl.bench._gpu_check import aot_compile as _aot_compile  # noqa: E402

from scandsl._core import CoreInputs, CoreSig, Decay, Readout, Shape, core_reference  # noqa: E402
from scandsl.testing import TOLERANCES, random_core_inputs, rel_err  # noqa: E402

SIGS = {
    "key": CoreSig(decay=Decay.KEY),
    "key_before": CoreSig(decay=Decay.KEY, readout=Readout.BEFORE),
    "value": CoreSig(decay=Decay.VALUE),
    "outer": CoreSig(decay=Decay.OUTER),
}
NAMES = ("q", "k", "v", "gk", "gv", "initial_state")
DEVICE = "cpu" if AOT else "cuda"
HALF = torch.bfloat16  # the 16-bit input dtype checked and timed
TARGET = Shape(4, 4096, 16, 128, 128)  # timing
CHECK = Shape(2, 300, 16, 128, 128)  # correctness, same H/K/V as TARGET (same compiled kernels)
LONG_T = 65536  # strong-decay runs
# per-kernel tile variants timed against the default (the first of each list is the default's shape)
SWEEP = {
    "fwd_o": [dict(fwd_BK=64, fwd_BV=128, fwd_warps=4), dict(fwd_BK=64, fwd_BV=128, fwd_warps=8),
              dict(fwd_BK=32, fwd_BV=128, fwd_warps=4), dict(fwd_BK=64, fwd_BV=64, fwd_warps=4),
              dict(fwd_BK=128, fwd_BV=128, fwd_warps=8), dict(fwd_BK=64, fwd_BV=128, fwd_warps=8, diag_BK=64)],
    "state": [dict(state_BK=64, state_BV=64, state_warps=4), dict(state_BK=32, state_BV=64, state_warps=4),
              dict(state_BK=32, state_BV=32, state_warps=4), dict(state_BK=64, state_BV=128, state_warps=8),
              dict(state_BK=64, state_BV=64, state_warps=4, num_stages=3)],
    "bwd_dv": [dict(dv_BK=64, dv_BV=128, dv_warps=4), dict(dv_BK=64, dv_BV=128, dv_warps=8),
               dict(dv_BK=32, dv_BV=128, dv_warps=4), dict(dv_BK=64, dv_BV=64, dv_warps=4),
               dict(dv_BK=128, dv_BV=128, dv_warps=8)],
    "bwd_dqk": [dict(dqk_BK=32, dqk_BV=64, dqk_warps=4), dict(dqk_BK=32, dqk_BV=64, dqk_warps=8),
                dict(dqk_BK=32, dqk_BV=32, dqk_warps=4), dict(dqk_BK=64, dqk_BV=64, dqk_warps=8),
                dict(dqk_BK=16, dqk_BV=64, dqk_warps=4), dict(dqk_BK=32, dqk_BV=128, dqk_warps=8),
                dict(dqk_BK=16, dqk_BV=128, dqk_warps=4)],
}  # fmt: skip
# dqk_mode="shared_scores" variants (the first is what {"dqk_mode": "shared_scores"} resolves to)
SHARED = [dict(dqk_mode="shared_scores"), dict(dqk_mode="shared_scores", da_BV=64),
          dict(dqk_mode="shared_scores", dqk_warps=8), dict(dqk_mode="shared_scores", dqk_BK=16, dqk_warps=8),
          dict(dqk_mode="shared_scores", da_BV=64, dqk_BK=16, dqk_warps=8),
          dict(dqk_mode="shared_scores", da_BV=128, da_warps=8)]  # fmt: skip
# dqk_mode="split" variants (KEY decay; sm_90 builds: 8 warps keep both kernels under 160 registers)
# and fwd_mode="split" (chunk_fwd_a + chunk_fwd_o_split; 8 warps: 80 registers each)
SPLIT = [dict(dqk_mode="split", dqk_warps=8), dict(dqk_mode="split"), dict(dqk_mode="split", dqk_warps=8, dqk_BV=64),
         dict(dqk_mode="split", dqk_BK=64, dqk_warps=8),
         dict(dqk_mode="split", dqk_warps=8, fwd_mode="split", fwd_warps=8),
         dict(dqk_mode="split", dqk_warps=8, fwd_mode="split"),
         dict(dqk_mode="split", dqk_warps=8, fwd_mode="split", fwd_warps=8, fwd_BK=64)]  # fmt: skip
if SMOKE:
    DEVICE, HALF, LONG_T = "cpu", torch.float16, 150
    TARGET, CHECK = Shape(1, 70, 2, 32, 32), Shape(1, 40, 2, 32, 32)
    SWEEP = {k: v[:2] for k, v in SWEEP.items()}
    SHARED, SPLIT = SHARED[:1], SPLIT[::4]  # dq/dk split, and with the split forward
KERNEL_GROUP = {"cumsum": None, "fwd_state": "state", "fwd_o": "fwd_o", "bwd_state": "state",
                "bwd_dv": "bwd_dv", "bwd_dqk": "bwd_dqk"}  # fmt: skip


def gates(x: CoreInputs, sig: CoreSig, strong: bool, seed: int) -> None:
    """Replace the log-gates by strong decays in [-8, -5] (keys) / ~-4 (values)."""
    if not strong:
        return
    gen = torch.Generator().manual_seed(seed)
    if x.gk is not None:
        x.gk = (-5.0 - 3.0 * torch.rand(x.gk.shape, generator=gen)).to(x.gk.device)
    if x.gv is not None:
        x.gv = F.logsigmoid(torch.randn(x.gv.shape, generator=gen) - 4.0).to(x.gv.device)


def make_inputs(name, dtype, B, T, H, K, V, *, seed=0, cu=None, strong=False, grad=True, state=True):
    sig = SIGS[name]
    x = random_core_inputs(sig, B=B, T=T, H=H, K=K, V=V, dtype=dtype, device=DEVICE, seed=seed,
                           cu_seqlens=cu, with_state=state)  # fmt: skip
    gates(x, sig, strong, seed + 1)
    if grad:
        for n in NAMES:
            t = getattr(x, n)
            if t is not None:
                t.requires_grad_(True)
    return sig, x


def _warm(job: tuple) -> str | None:
    """Worker: run one (signature, dtype, H, K, V, config, states) fwd+bwd on tiny inputs to fill the cache."""
    name, dtype_name, H, K, V, cfg, state = job
    try:
        from scandsl.lowering import chunk_vector

        sig, x = make_inputs(name, getattr(torch, dtype_name), 1, 130, H, K, V, state=state)
        x.output_final_state = state
        o, ht = chunk_vector.run(sig, x, cfg)
        loss = o.float().sum() + (ht.sum() if ht is not None else 0.0)
        torch.autograd.grad(loss, [x.q, x.k, x.v])
        return None
    except Exception as err:  # a config that does not compile is a result, not a crash
        return f"{job}: {type(err).__name__}: {str(err)[:300]}"


def warm_up(rep: Report, cfg_over: dict, sweep: bool) -> None:
    # correctness runs carry states (initial / final); timing runs do not: other constexpr variants
    jobs = []
    for name in SIGS:
        jobs += [(name, dt, *CHECK[2:], cfg_over, True) for dt in ("float32", str(HALF)[6:])]
    jobs += [
        ("outer", "float32", 2, 24, 40, cfg_over, True),
        ("key_before", "float32", 1, 32, 32, cfg_over, True),
    ]
    for name in ("key", "outer"):  # dqk_mode="shared_scores" correctness
        jobs += [(name, dt, *CHECK[2:], {**cfg_over, **SHARED[0]}, True) for dt in ("float32", str(HALF)[6:])]
    for name in ("key", "key_before"):
        jobs.append((name, str(HALF)[6:], *TARGET[2:], cfg_over, False))
        jobs += [(name, str(HALF)[6:], *TARGET[2:], {**cfg_over, **v}, False) for v in SHARED]
        if sweep:
            for variants in SWEEP.values():
                jobs += [(name, str(HALF)[6:], *TARGET[2:], {**cfg_over, **v}, False) for v in variants[1:]]
            jobs += [(name, str(HALF)[6:], *TARGET[2:], {**cfg_over, "chunk": c}, False) for c in (32, 128)]
    if SMOKE:
        jobs = jobs[:3]
    t0 = time.time()
    with mp.get_context("spawn").Pool(min(len(jobs), max(1, (mp.cpu_count() or 2) - 2))) as pool:
        try:
            errors = [e for e in pool.map_async(_warm, jobs, chunksize=1).get(timeout=200) if e]
        except mp.TimeoutError:  # compiles left undone happen (serially) at first use below
            errors = ["warm-up timed out after 200 s"]
            pool.terminate()
    rep.put("warm_up", "jobs", len(jobs))
    rep.put("warm_up", "seconds", round(time.time() - t0, 1))
    rep.put("warm_up", "errors", errors)


def compare(sig, x, cfg, dtype) -> dict:
    """Relative errors of o, final state and every gradient against the fp32 reference."""
    from scandsl.lowering import chunk_vector

    o, ht = chunk_vector.run(sig, x, cfg)
    x32 = CoreInputs(**{f: getattr(x, f) for f in ("q", "k", "v", "gk", "gv", "initial_state", "scale",
                                                   "output_final_state", "cu_seqlens")})  # fmt: skip
    ro, rht = core_reference(sig, x32)
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(ro.shape, generator=gen).to(DEVICE)
    dht = torch.randn(rht.shape, generator=gen).to(DEVICE)
    named = [(n, getattr(x, n)) for n in NAMES if getattr(x, n) is not None]
    got = torch.autograd.grad((o.float() * w).sum() + (ht * dht).sum(), [t for _, t in named])
    ref = torch.autograd.grad((ro.float() * w).sum() + (rht * dht).sum(), [t for _, t in named])
    errs = {"o": rel_err(o.float(), ro.float()), "final_state": rel_err(ht, rht)}
    errs.update({f"d{n}": rel_err(a.float(), b.float()) for (n, _), a, b in zip(named, got, ref)})
    tol_out, tol_grad = TOLERANCES[dtype]
    ok = all(v <= (tol_out if k in ("o", "final_state") else tol_grad) for k, v in errs.items())
    return {"ok": ok, **{k: float(f"{v:.3e}") for k, v in errs.items()}}


def correctness(rep: Report, cfg: dict) -> dict:
    status = {}
    for name in SIGS:
        for dtype in (torch.float32, HALF):
            tag = f"{name}/{str(dtype)[6:]}/" + "-".join(f"{f}{n}" for f, n in zip("BTHKV", CHECK))
            try:
                sig, x = make_inputs(name, dtype, *CHECK, seed=1)
                res = compare(sig, x, cfg, dtype)
            except Exception:
                res = {"ok": False, "error": traceback.format_exc()[-1500:]}
            rep.put("correctness", tag, res)
            status[name] = status.get(name, True) and res["ok"]
    B, T, H, K, V = CHECK
    cu = torch.tensor([0, 0, 1, 6, 37, T], dtype=torch.int32, device=DEVICE)  # lengths 0, 1, 5, 31, T-37
    cases = {
        "outer/float32/K24-V40-T67": dict(name="outer", dtype=torch.float32, B=2, T=67, H=2, K=24, V=40),
        "key_before/float32/varlen": dict(name="key_before", dtype=torch.float32, B=1, T=T, H=H, K=K, V=V, cu=cu),
        "key/bfloat16/varlen": dict(name="key", dtype=HALF, B=1, T=T, H=H, K=K, V=V, cu=cu),
        f"key_before/float32/strong-decay-T{LONG_T}": dict(
            name="key_before", dtype=torch.float32, B=1, T=LONG_T, H=1, K=32, V=32, strong=True),
    }  # fmt: skip
    for tag, c in cases.items():
        if rep.left() < 120:
            rep.put("correctness", tag, "skipped: time budget")
            continue
        try:
            dtype = c.pop("dtype")
            sig, x = make_inputs(dtype=dtype, seed=2, **c)
            res = compare(sig, x, cfg, dtype)
        except Exception:
            res = {"ok": False, "error": traceback.format_exc()[-1500:]}
        rep.put("correctness", tag, res)
        status[c["name"]] = status.get(c["name"], True) and res["ok"]
    return status


def correctness_shared(rep: Report, cfg: dict) -> bool:
    """dqk_mode="shared_scores" against the reference (key / outer fp32 + bf16, key varlen)."""
    ok = True
    B, T, H, K, V = CHECK
    cu = torch.tensor([0, 0, 1, 6, 37, T], dtype=torch.int32, device=DEVICE)
    cases = [(n, dt, None) for n in ("key", "outer") for dt in (torch.float32, HALF)]
    cases.append(("key_before", torch.float32, cu))
    for name, dtype, c in cases:
        tag = f"{name}/{str(dtype)[6:]}" + ("/varlen" if c is not None else "")
        try:
            if c is None:
                sig, x = make_inputs(name, dtype, *CHECK, seed=6)
            else:
                sig, x = make_inputs(name, dtype, 1, T, H, K, V, cu=c, seed=6)
            res = compare(sig, x, {**cfg, **SHARED[0]}, dtype)
        except Exception:
            res = {"ok": False, "error": traceback.format_exc()[-1500:]}
        rep.put("correctness_shared_scores", tag, res)
        ok = ok and res["ok"]
    return ok


def bench(fn) -> float:
    """Median ms of ``fn`` (do_bench); in --smoke, with no CUDA events on the CPU, one timed call."""
    if SMOKE:
        t0 = time.perf_counter()
        fn()
        return round(1e3 * (time.perf_counter() - t0), 4)
    from triton.testing import do_bench

    return round(do_bench(fn, warmup=25, rep=200, return_mode="median"), 4)


def timing_shared(rep: Report, name: str, cfg_over: dict) -> None:
    """fwd+bwd and the dq/dk kernels: dqk_mode="shared_scores" variants against the default."""
    from scandsl.lowering import chunk_vector
    from scandsl.lowering import chunk_vector_launch as L

    B, T, H, K, V = TARGET
    sig, x = make_inputs(name, HALF, B, T, H, K, V, seed=4, state=False)
    x.output_final_state = False
    do = torch.randn_like(x.v)
    inputs = [x.q, x.k, x.v, x.gk]
    base = chunk_vector.resolve_config(sig, x, {**cfg_over, "dqk_mode": "fused"})  # the baseline: fused dq/dk
    P = L.Plan(sig, x, base)
    q, k, v, gk = (t.detach() for t in inputs)
    gk_cum = L.cumsum(P, gk)
    hs, _ = L.fwd_state(P, k, v, gk_cum, None, None, False)
    dhs, _ = L.bwd_state(P, q, do, gk_cum, None, hs, None, False)
    ref = L.bwd_dqk(P, q, k, v, do, gk_cum, None, hs, dhs)
    section = f"timing_shared_scores/{name}"
    rep.put(section, "fused_bwd_dqk_ms", bench(lambda: L.bwd_dqk(P, q, k, v, do, gk_cum, None, hs, dhs)))

    def fwd_bwd(cfg):
        o, _ = chunk_vector.run(sig, x, cfg)
        return torch.autograd.grad(o, inputs, do)

    rep.put(section, "fused_fwd_bwd_ms", bench(lambda: fwd_bwd(base)))
    with torch.no_grad():
        o_base = chunk_vector.run(sig, x, base)[0]
    results = []
    for var in SHARED + SPLIT:
        if rep.left() < 30:
            break
        try:
            cfg = chunk_vector.resolve_config(sig, x, {**cfg_over, **var})
            Pv = P.with_config(**cfg)
            dqk = L.bwd_dqk_split if cfg["dqk_mode"] == "split" else L.bwd_dqk_shared
            got = dqk(Pv, q, k, v, do, gk_cum, None, hs, dhs)
            err = max(rel_err(a.float(), b.float()) for a, b in zip(got, ref))
            with torch.no_grad():  # the forward too (fwd_mode="split" variants)
                err = max(err, rel_err(chunk_vector.run(sig, x, cfg)[0].float(), o_base.float()))
            row = {"config": var, "rel_err_vs_fused": float(f"{err:.2e}")}
            if err < 2e-2:
                row["bwd_dqk_ms"] = bench(lambda Pv=Pv, dqk=dqk: dqk(Pv, q, k, v, do, gk_cum, None, hs, dhs))
                row["fwd_bwd_ms"] = bench(lambda cfg=cfg: fwd_bwd(cfg))
                with torch.no_grad():
                    row["fwd_ms"] = bench(lambda cfg=cfg: chunk_vector.run(sig, x, cfg))
            results.append(row)
        except Exception as e:
            results.append({"config": var, "error": f"{type(e).__name__}: {str(e)[:200]}"})
        rep.put(section, "variants", results)


def strong_target_shape(rep: Report, cfg: dict) -> None:
    """bf16 at B=1 T=65536 H=16 K=V=128 with log-decays in [-8, -5]: everything stays finite."""
    from scandsl.lowering import chunk_vector

    for name in ("key", "key_before"):
        sig, x = make_inputs(name, HALF, 1, LONG_T, *TARGET[2:], seed=3, strong=True)
        o, ht = chunk_vector.run(sig, x, cfg)
        grads = torch.autograd.grad(o.float().sum() + ht.sum(), [x.q, x.k, x.v, x.gk, x.initial_state])
        finite = all(bool(torch.isfinite(t).all()) for t in (o, ht, *grads))
        rep.put("strong_decay_T65536_bf16", name, {"finite": finite})


def timing(rep: Report, name: str, cfg_over: dict, sweep: bool) -> None:
    from scandsl.lowering import chunk_vector
    from scandsl.lowering import chunk_vector_launch as L

    B, T, H, K, V = TARGET
    sig, x = make_inputs(name, HALF, B, T, H, K, V, seed=4, state=False)
    x.output_final_state = False
    do = torch.randn_like(x.v)
    inputs = [x.q, x.k, x.v, x.gk]

    def fwd(cfg):
        with torch.no_grad():
            return chunk_vector.run(sig, x, cfg)

    def fwd_bwd(cfg):
        o, _ = chunk_vector.run(sig, x, cfg)
        return torch.autograd.grad(o, inputs, do)

    base = chunk_vector.resolve_config(sig, x, cfg_over)
    section = f"timing/{name}"
    rep.put(section, "default_config", base)
    rep.put(section, "default_fwd_ms", bench(lambda: fwd(base)))
    rep.put(section, "default_fwd_bwd_ms", bench(lambda: fwd_bwd(base)))
    if not sweep:
        return
    # per-kernel times with the default config, then the tile variants of each kernel
    P = L.Plan(sig, x, base)
    q, k, v, gk = (t.detach() for t in inputs)
    gk_cum = L.cumsum(P, gk)
    hs, _ = L.fwd_state(P, k, v, gk_cum, None, None, False)
    dhs, _ = L.bwd_state(P, q, do, gk_cum, None, hs, None, False)
    used = torch.arange(P.TC, device=DEVICE) + P.chunk_seq.long()
    kernels = {
        "cumsum": lambda P: (L.cumsum(P, gk),),
        "fwd_state": lambda P: L.fwd_state(P, k, v, gk_cum, None, None, False)[:1],
        "fwd_o": lambda P: L.fwd_o(P, q, k, v, gk_cum, None, hs, HALF)[:1],
        # dhs: only the slots of chunks (a sequence's last slot is never written nor read)
        "bwd_state": lambda P: (L.bwd_state(P, q, do, gk_cum, None, hs, None, False)[0][used],),
        "bwd_dv": lambda P: L.bwd_dv(P, q, k, v, do, None, gk_cum, None, hs, dhs)[:1],
        "bwd_dqk": lambda P: L.bwd_dqk(P, q, k, v, do, gk_cum, None, hs, dhs),
    }
    best = {}
    for kname, fn in kernels.items():
        ref = fn(P)
        rep.put(section, f"{kname}_default_ms", bench(lambda fn=fn: fn(P)))
        group = KERNEL_GROUP[kname]
        if group is None or rep.left() < 60:
            continue
        results = []
        for var in SWEEP[group]:
            try:
                Pv = P.with_config(**var)
                err = max(rel_err(a.float(), b.float()) for a, b in zip(fn(Pv), ref))
                ms = bench(lambda fn=fn, Pv=Pv: fn(Pv)) if err < 2e-2 else None
                results.append({"config": var, "rel_err_vs_default": float(f"{err:.2e}"), "ms": ms})
            except Exception as e:
                results.append({"config": var, "error": f"{type(e).__name__}: {str(e)[:200]}"})
        rep.put(section, f"{kname}_sweep", results)
        timed = [r for r in results if r.get("ms") is not None]
        if timed:
            best[kname] = min(timed, key=lambda r: r["ms"])
    combined = dict(base)
    for kname in ("fwd_o", "bwd_dv", "bwd_dqk"):
        if kname in best:
            combined.update(best[kname]["config"])
    if "fwd_state" in best and "bwd_state" in best:
        s_f, s_b = best["fwd_state"], best["bwd_state"]
        combined.update(min((s_f, s_b), key=lambda r: r["ms"])["config"])  # one state config serves both
    combined = chunk_vector.resolve_config(sig, x, combined)
    rep.put(section, "combined_config", combined)
    rep.put(section, "combined_fwd_ms", bench(lambda: fwd(combined)))
    rep.put(section, "combined_fwd_bwd_ms", bench(lambda: fwd_bwd(combined)))
    for chunk in (32, 128):
        if rep.left() < 30:
            break
        cfg = chunk_vector.resolve_config(sig, x, {**cfg_over, "chunk": chunk})
        rep.put(section, f"chunk{chunk}_fwd_ms", bench(lambda cfg=cfg: fwd(cfg)))
        rep.put(section, f"chunk{chunk}_fwd_bwd_ms", bench(lambda cfg=cfg: fwd_bwd(cfg)))


def aot_compile(kernel, meta: dict, fp32_ptrs: set) -> dict:
    """sm_90 compile of a chunk_vector kernel: bf16 tensors, fp32 ``fp32_ptrs``, int32 chunk maps."""
    maps = ("cu", "chunk_seq", "chunk_loc", "chunk_off")

    def arg_type(name: str) -> str:
        if name in maps:
            return "*i32"
        return "fp32" if name == "scale" else ("*fp32" if name in fp32_ptrs else "*bf16")

    return _aot_compile(kernel, meta, arg_type)


def _aot_jobs(mod, sig: CoreSig, cfg: dict) -> dict:
    """{kernel name: (kernel, constexprs + launch options)} of the kernels ``cfg`` launches for
    the forward output, dv and dq / dk (the state walks and the cumsum do not change with the modes)."""
    common = dict(H=TARGET.H, K=TARGET.K, C=cfg["chunk"], SC=cfg["sub"], PREC=cfg["fp32_dot"],
                  num_stages=cfg["num_stages"])  # fmt: skip
    wide = dict(common, V=TARGET.V)
    fwd, dv, dqk = (
        dict(BK=cfg[f"{p}_BK"], BV=cfg[f"{p}_BV"], num_warps=cfg[f"{p}_warps"]) for p in ("fwd", "dv", "dqk")
    )
    before = sig.readout is Readout.BEFORE
    jobs = {}
    if cfg["fwd_mode"] == "split":
        jobs["chunk_fwd_a"] = (
            mod.chunk_fwd_a,
            dict(common, BK=fwd["BK"], BKD=cfg["diag_BK"], num_warps=fwd["num_warps"]),
        )
        jobs["chunk_fwd_o_split"] = (mod.chunk_fwd_o_split, dict(wide, **fwd))
        jobs["chunk_bwd_dv_split"] = (mod.chunk_bwd_dv_split, dict(wide, **dv))
    else:
        jobs["chunk_fwd_o"] = (mod.chunk_fwd_o, dict(wide, **fwd, BKD=cfg["diag_BK"]))
        jobs["chunk_bwd_dv"] = (mod.chunk_bwd_dv, dict(wide, **dv, BKD=cfg["diag_BK"]))
    if cfg["dqk_mode"] == "fused":
        jobs["chunk_bwd_dqk"] = (mod.chunk_bwd_dqk, dict(wide, **dqk, BVD=cfg["diag_BV"]))
        return jobs
    jobs["chunk_bwd_da"] = (
        mod.chunk_bwd_da,
        dict(wide, BV=cfg["da_BV"], BVD=cfg["diag_BV"], num_warps=cfg["da_warps"]),
    )
    if cfg["dqk_mode"] == "shared_scores":
        jobs["chunk_bwd_dqk_shared"] = (mod.chunk_bwd_dqk_shared, dict(wide, **dqk))
    else:
        intra = dict(common, BK=dqk["BK"], num_warps=dqk["num_warps"], STORE_XQ=before)
        jobs["chunk_bwd_dqk_intra"] = (mod.chunk_bwd_dqk_intra, intra)
        jobs["chunk_bwd_dqk_inter"] = (mod.chunk_bwd_dqk_inter, dict(wide, **dqk, STORE_XQ=before))
    return jobs


def aot_main(rep: Report) -> None:
    """--aot: the output, dv and dq/dk kernels of every mode at the timing shape, compiled for
    sm_90 on the CPU (registers, spill, shared memory, wgmma instructions)."""
    from scandsl.lowering import chunk_vector
    from scandsl.lowering import chunk_vector_launch as L

    fp32 = {"gk_cum", "gv_cum", "dgk", "dgv", "da", "dat", "ddg", "ox", "a", "dqa", "dka", "xa", "xqa"}
    for name in ("key", "key_before"):
        sig = SIGS[name]
        mod = L.kernels(sig)
        for var in [{}] + SHARED + SPLIT:
            cfg = {**chunk_vector.default_config(sig, TARGET), **var}
            key = json.dumps(var, sort_keys=True)
            for kname, (kern, meta) in _aot_jobs(mod, sig, cfg).items():
                try:
                    res = aot_compile(kern, meta, fp32)
                except Exception as err:
                    res = f"{type(err).__name__}: {str(err)[:300]}"
                rep.put(f"aot {name} {kname}", key, res)
                print("aot", name, kname, key, res, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=330.0)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--config", type=json.loads, default={}, help="overrides of the default config")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes (checks the script)")
    ap.add_argument(
        "--aot", action="store_true", help="CPU: compile the dq/dk kernels for sm_90, regs/spills"
    )
    args = ap.parse_args()
    rep = Report(args.out / "chunk_vector.json", args.budget, echo=True)
    if args.aot:
        aot_main(rep)
        return
    import triton

    rep.put("env", "triton", triton.__version__)
    sweep = not args.no_sweep
    try:
        warm_up(rep, args.config, sweep)
    except Exception:
        rep.put("warm_up", "error", traceback.format_exc()[-1500:])
    status = correctness(rep, args.config)
    shared_ok = correctness_shared(rep, args.config)
    # the shared_scores comparison first: it is the open question, the tile sweep comes after
    for name in ("key", "key_before"):
        if not (status.get(name) and shared_ok):
            rep.put(f"timing_shared_scores/{name}", "refused", "correctness failed")
            continue
        try:
            timing_shared(rep, name, args.config)
        except Exception:
            rep.put(f"timing_shared_scores/{name}", "error", traceback.format_exc()[-2000:])
    for name in ("key", "key_before"):
        if not status.get(name):
            rep.put(f"timing/{name}", "refused", "correctness failed")
            continue
        try:
            timing(rep, name, args.config, sweep)
        except Exception:
            rep.put(f"timing/{name}", "error", traceback.format_exc()[-2000:])
    if rep.left() > 40:
        try:
            strong_target_shape(rep, args.config)
        except Exception:
            rep.put("strong_decay_T65536_bf16", "error", traceback.format_exc()[-1500:])
    print("JSON", json.dumps(rep.data, default=str), flush=True)


if __name__ == "__main__":
    main()
