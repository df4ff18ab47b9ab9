"""GPU check of the chunked delta rule: compile + correctness (fp32, bf16) + timing.

Run on the GPU machine from the repository root:

    pip install --no-deps --no-build-isolation -e . -q
    python bench/gpu_check_chunk_delta.py --out $OUT [--budget 320] [--skip-correctness] [--sweep N]

Without a GPU, ``--offline-compile`` compiles the default-config kernels for sm_90 with Triton's
bundled ptxas and reports registers and spills per kernel (a compile check, not a timing).

1. ``delta`` and ``scalar_delta`` against ``core_reference`` (fp32): B=2 T=300 H=4 K=V=128 in
   fp32 and bf16, varlen (lengths 0, 1, 5, 31, 163) at K=24 V=40, K=V=256, and a long sequence
   (T=4096) for stability; outputs, final states and every gradient;
2. at B=4 T=4096 H=16 K=V=128 bf16: forward (no grad) and forward+backward over a few configs,
   each config's output first checked against the default config's; then a per-kernel
   profile of the fastest. Anchors (flash-linear-attention 0.6.0, same H100): chunk_delta_rule
   0.622 / 2.39 ms, chunk_gated_delta_rule 0.671 ms forward (its backward refuses on Triton 3.6).

Timings are refused for a signature whose correctness failed. Results go to
``<out>/chunk_delta_gpu.json``, rewritten after every item so a timeout keeps them.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from scandsl.bench._gpu_check import Report
from scandsl.lowering import chunk_delta
from triton.testing import do_bench

from scandsl._core import CoreInputs, CoreSig, Shape, core_reference
from scandsl.testing import TAXONOMY_SIGS, TOLERANCES, random_core_inputs, rel_err

NAMES = ("q", "k", "v", "beta", "g", "initial_state")
SIGS = ("delta", "scalar_delta")
ANCHORS = {"delta": {"fwd": 0.622, "fwdbwd": 2.39}, "scalar_delta": {"fwd": 0.671, "fwdbwd": None}}
DEV = "cuda"
BENCH = Shape(B=4, T=4096, H=16, K=128, V=128)
SWEEP = [
    {},  # the default config
    {"bv": 64},
    {"bv": 16},
    {"num_warps": 8},
    {"state_warps": 4},
    {"out_bv": 32},
    {"out_bv": 128},
    {"num_stages": 3},
    {"bwd_bk": 32, "bwd_warps": 4},
    {"chunk": 32, "bwd_bk": 128},
]


def _grads(x, o, ht, w, dht):
    named = [(n, getattr(x, n)) for n in NAMES if getattr(x, n) is not None and getattr(x, n).requires_grad]
    loss = (o.float() * w).sum() + (ht * dht).sum()
    return dict(zip([n for n, _ in named], torch.autograd.grad(loss, [t for _, t in named])))


def check(rep: Report, label: str, sig: CoreSig, x, cfg=None, dtype=torch.float32) -> bool:
    entry = {"case": label, "dtype": str(dtype).replace("torch.", ""), "config": cfg}
    tol_out, tol_grad = TOLERANCES[dtype]
    try:
        t = time.time()
        o, ht = chunk_delta.run(sig, x, cfg)
        torch.cuda.synchronize()
        entry["first_call_s"] = round(time.time() - t, 1)
        ro, rht = core_reference(sig, x)
        gen = torch.Generator(device=DEV).manual_seed(0)
        w = torch.randn(ro.shape, device=DEV, generator=gen)
        dht = torch.randn(rht.shape, device=DEV, generator=gen)
        errs = {"o": rel_err(o.float(), ro.float()), "final_state": rel_err(ht, rht)}
        g_k = _grads(x, o, ht, w, dht)
        g_r = _grads(x, ro, rht, w, dht)
        errs.update({f"d{n}": rel_err(g_k[n].float(), g_r[n].float()) for n in g_k})
        ok = all(v <= (tol_grad if k.startswith("d") else tol_out) for k, v in errs.items())
        entry.update(ok=ok, errors={k: float(f"{v:.3e}") for k, v in errs.items()})
    except Exception as err:  # a compile failure is a result, not a crash
        ok = False
        entry.update(ok=False, error=f"{type(err).__name__}: {err}"[:2000], tb=traceback.format_exc()[-3000:])
    rep.data["correctness"].append(entry)
    rep.save()
    print(label, entry["dtype"], "OK" if ok else "FAIL", entry.get("errors", entry.get("error")), flush=True)
    return ok


def correctness(rep: Report) -> None:
    for name in SIGS:
        sig = TAXONOMY_SIGS[name]
        ok = True
        for dtype in (torch.float32, torch.bfloat16):
            x = random_core_inputs(
                sig, B=2, T=300, H=4, K=128, V=128, dtype=dtype, device=DEV, requires_grad=True
            )
            ok &= check(rep, f"{name} T300 K128 V128", sig, x, dtype=dtype)
        cu = torch.tensor([0, 0, 1, 6, 37, 200], dtype=torch.int32, device=DEV)
        x = random_core_inputs(
            sig, T=200, H=2, K=24, V=40, device=DEV, requires_grad=True, cu_seqlens=cu, seed=2
        )
        ok &= check(rep, f"{name} varlen K24 V40", sig, x)
        ok &= check(rep, f"{name} varlen K24 V40 chunk16", sig, x, cfg={"chunk": 16, "bv": 16})
        x = random_core_inputs(sig, B=1, T=100, H=2, K=256, V=256, device=DEV, requires_grad=True, seed=3)
        ok &= check(rep, f"{name} K256 V256", sig, x)
        x = random_core_inputs(sig, B=1, T=4096, H=2, K=64, V=64, device=DEV, requires_grad=True, seed=4)
        ok &= check(rep, f"{name} long T4096 K64 V64", sig, x)
        if not ok:
            rep.data["failed_sigs"].append(name)


def bench_inputs(sig: CoreSig, grad: bool) -> CoreInputs:
    B, T, H, K, V = BENCH
    gen = torch.Generator(device=DEV).manual_seed(0)
    dt = torch.bfloat16

    def leaf(t):
        return t.requires_grad_(grad)

    beta = torch.sigmoid(torch.randn(B, T, H, device=DEV, generator=gen))
    return CoreInputs(
        q=leaf(torch.randn(B, T, H, K, device=DEV, generator=gen).to(dt)),
        k=leaf(F.normalize(torch.randn(B, T, H, K, device=DEV, generator=gen), dim=-1).to(dt)),
        v=leaf((torch.randn(B, T, H, V, device=DEV, generator=gen) * beta[..., None]).to(dt)),
        beta=leaf(beta),
        g=leaf(F.logsigmoid(torch.randn(B, T, H, device=DEV, generator=gen) + 3.0))
        if "g" in sig.uses
        else None,
        scale=K**-0.5,
    )


def timing(rep: Report, sweep: list[dict]) -> None:
    for i_sig, name in enumerate(SIGS):
        deadline = time.time() + rep.left() / (len(SIGS) - i_sig)  # an even share per signature
        sig = TAXONOMY_SIGS[name]
        if name in rep.data["failed_sigs"]:
            rep.data["timing"][name] = "refused: correctness failed"
            continue
        x = bench_inputs(sig, grad=True)
        base = chunk_delta.default_config(sig, BENCH)
        params = [getattr(x, n) for n in NAMES if getattr(x, n) is not None]
        do = torch.randn_like(x.v)
        results, ref_o = [], None
        for delta in sweep:
            if time.time() > deadline - 20 and results:
                results.append({"config": delta, "skipped": "budget"})
                break
            cfg = base | delta
            entry = {"config": cfg}
            try:
                with torch.no_grad():
                    o, _ = chunk_delta.run(sig, x, cfg)
                if ref_o is None:
                    ref_o = o.float()
                entry["o_vs_default"] = float(f"{rel_err(o.float(), ref_o):.3e}")
                if entry["o_vs_default"] > 1e-2:
                    raise RuntimeError(f"output differs from the default config's: {entry['o_vs_default']}")
                entry.update(time_config(sig, x, cfg, do, params))
            except Exception as err:
                entry["error"] = f"{type(err).__name__}: {err}"[:1500]
            results.append(entry)
            rep.data["timing"][name] = {"anchor_fla": ANCHORS[name], "configs": results}
            rep.save()
            print(name, entry, flush=True)
        done = [r for r in results if "fwdbwd_ms" in r]
        if done:
            best = min(done, key=lambda r: r["fwdbwd_ms"])
            rep.data["timing"][name]["best_fwd_ms"] = min(r["fwd_ms"] for r in done)
            rep.data["timing"][name]["best_fwdbwd_ms"] = best["fwdbwd_ms"]
            profile(rep, name, sig, x, best["config"], do)


def time_config(sig: CoreSig, x, cfg: dict, do, params) -> dict:
    with torch.no_grad():
        fwd = do_bench(lambda: chunk_delta.run(sig, x, cfg), warmup=25, rep=200)

    def step():
        o, _ = chunk_delta.run(sig, x, cfg)
        torch.autograd.backward(o, do)

    fwdbwd = do_bench(step, warmup=10, rep=200, grad_to_none=params)
    return {"fwd_ms": round(fwd, 4), "fwdbwd_ms": round(fwdbwd, 4)}


def profile(rep: Report, name: str, sig: CoreSig, x, cfg, do) -> None:
    try:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                o, _ = chunk_delta.run(sig, x, cfg)
                torch.autograd.backward(o, do)
            torch.cuda.synchronize()
        rows = {}
        for ev in prof.key_averages():
            if ev.device_type.name == "CUDA" or "delta" in ev.key:
                total = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
                rows[ev.key[:60]] = round(total / 5 / 1000, 4)  # ms per fwd+bwd
        rep.data["profile"][name] = dict(sorted(rows.items(), key=lambda kv: -kv[1])[:15])
        rep.save()
        print(name, "profile", rep.data["profile"][name], flush=True)
    except Exception as err:
        rep.data["profile"][name] = f"{type(err).__name__}: {err}"[:800]


def offline_compile(out: Path) -> None:
    """Compile the default-config kernels for sm_90 without a GPU (Triton's bundled ptxas) and
    report registers and spill bytes per thread from the cubin: a compile check and a register
    pressure check for sessions that have no GPU. Writes ``<out>/chunk_delta_offline.json``."""
    import os
    import re
    import subprocess
    import tempfile

    from scandsl.lowering._source import load_source
    from scandsl.lowering.chunk_delta_source import generate_source
    from triton.backends.compiler import GPUTarget

    ints = {"T", "NT", "n_rows"}
    wide = {"beta", "g", "h0", "ht", "dht", "dh0", "dbeta", "dg"}  # fp32 tensors
    tables = {"cu_seqlens", "chunk_seq", "chunk_start", "chunk_offsets"}
    tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    shape = Shape(B=4, T=4096, H=16, K=128, V=128)
    report = {}
    for name in SIGS:
        sig = TAXONOMY_SIGS[name]
        cfg = chunk_delta.default_config(sig, shape)
        mod = load_source(generate_source(sig, cfg, dtype=torch.bfloat16), name=f"offline_{name}")
        base = dict(H=shape.H, K=shape.K, V=shape.V, C=cfg["chunk"], BK=128, IS_VARLEN=False)
        kernels = {
            "delta_prepare": (base | dict(STORE_T=True, BV=cfg["out_bv"]), cfg["num_warps"]),
            "delta_fwd_state": (base | dict(USE_H0=True, STORE_HT=True, BV=cfg["bv"]), cfg["state_warps"]),
            "delta_fwd_out": (base | dict(BV=cfg["out_bv"], NV=2), cfg["num_warps"]),
            "delta_bwd_state": (base | dict(USE_DHT=True, STORE_DH0=True, BV=cfg["bv"]), cfg["state_warps"]),
            "delta_bwd_chunk": (base | dict(BK=cfg["bwd_bk"], BV=cfg["out_bv"], NK=2), cfg["bwd_warps"]),
        }
        for kname, (consts, warps) in kernels.items():
            fn = getattr(mod, kname)
            sig_types = {}
            for a in fn.arg_names:
                if a in consts:
                    sig_types[a] = "constexpr"
                elif a in ints:
                    sig_types[a] = "i32"
                elif a == "scale":
                    sig_types[a] = "fp32"
                else:
                    sig_types[a] = "*fp32" if a in wide else "*i32" if a in tables else "*bf16"
            attrs = {
                (i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names) if sig_types[a][0] == "*"
            }
            src = triton.compiler.ASTSource(fn=fn, signature=sig_types, constexprs=consts, attrs=attrs)
            key = f"{name}/{kname}"
            try:
                k = triton.compile(
                    src,
                    target=GPUTarget("cuda", 90, 128),
                    options={"num_warps": warps, "num_stages": cfg["num_stages"]},
                )
                with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as fh:
                    fh.write(k.asm["cubin"])
                usage = subprocess.run(
                    [tool, "--dump-resource-usage", fh.name], capture_output=True, text=True
                ).stdout
                regs, stack = re.search(r"REG:(\d+)", usage), re.search(r"STACK:(\d+)", usage)
                report[key] = {
                    "warps": warps,
                    "regs": int(regs.group(1)) if regs else None,
                    "spill_bytes": int(stack.group(1)) if stack else None,
                    "smem": k.metadata.shared,
                }
            except Exception as err:
                report[key] = {"error": f"{type(err).__name__}: {err}"[:1500]}
            print(key, report[key], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "chunk_delta_offline.json").write_text(json.dumps(report, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=320)
    ap.add_argument("--skip-correctness", action="store_true")
    ap.add_argument("--sweep", type=int, default=len(SWEEP), help="time only the first N configs of SWEEP")
    ap.add_argument("--smoke", action="store_true", help="tiny timing shape (checks the script itself)")
    ap.add_argument("--offline-compile", action="store_true", help="no GPU: sm_90 compile + registers only")
    args = ap.parse_args()
    if args.offline_compile:
        offline_compile(args.out)
        return
    if args.smoke:
        global BENCH
        BENCH = Shape(B=1, T=40, H=1, K=32, V=32)
    rep = Report(args.out / "chunk_delta_gpu.json", args.budget, correctness=[], failed_sigs=[], timing={}, profile={})
    if not args.skip_correctness:
        correctness(rep)
    timing(rep, SWEEP[: args.sweep])
    rep.save()
    print(json.dumps({k: rep.data[k] for k in ("failed_sigs", "timing")}, indent=1)[:6000])


if __name__ == "__main__":
    main()
