"""GPU check of the sequential strategy: compile + correctness (fp32, bf16) + forward timing sweep.

Run on the GPU machine from the repository root:

    pip install --no-deps --no-build-isolation -e . -q
    python bench/gpu_check_sequential.py --out $OUT [--budget 300]

1. every TAXONOMY_SIGS entry, fp32 and bf16 inputs, B=2 T=256 H=4 K=V=64 (channel rows
   K=16): outputs, final state and every gradient against ``core_reference`` (fp32), plus a
   varlen case, K=24/V=40, K=V=256 and decode_step;
2. forward sweep over (BV, num_warps) at B=4 T=4096 H=16 K=V=128 bf16 for SCALAR (mamba2)
   and KEY (gla) decays, then fwd+bwd with the best forward config over (BV_bwd, warps_bwd);
3. default-config forward / fwd+bwd for the other rows at the same size (channel rows at
   Mamba's K=N=16, V=128).

Timings refuse to be reported for a signature whose correctness check failed. Results go
to ``<out>/sequential_gpu.json`` (rewritten after every item, so a timeout keeps them).
"""

from __future__ import annotations

import argparse
import json
import traceback
from pathlib import Path

import torch
import triton
from scandsl.bench._gpu_check import Report
from scandsl.lowering import sequential
from triton.testing import do_bench

from scandsl._core import CoreSig, Decay, Shape, core_reference
from scandsl.testing import TAXONOMY_SIGS, TOLERANCES, random_core_inputs, rel_err

NAMES = ("q", "k", "v", "g", "gk", "gv", "A", "beta", "initial_state")
BENCH_SHAPE = Shape(4, 4096, 16, 128, 128)  # the FLA anchors' size (docs: design.md)


def _grads(sig, x, o, ht, w, dht):
    named = [(n, getattr(x, n)) for n in NAMES if getattr(x, n) is not None]
    loss = (o.float() * w).sum() + (ht * dht).sum()
    return dict(zip([n for n, _ in named], torch.autograd.grad(loss, [t for _, t in named])))


def check(rep: Report, label: str, sig: CoreSig, x, cfg=None, dtype=torch.float32) -> bool:
    entry = {"case": label, "dtype": str(dtype).replace("torch.", "")}
    tol_out, tol_grad = TOLERANCES[dtype]
    try:
        o, ht = sequential.run(sig, x, cfg)
        ro, rht = core_reference(sig, x)
        gen = torch.Generator(device="cuda").manual_seed(0)
        w = torch.randn(ro.shape, device="cuda", generator=gen)
        dht = torch.randn(rht.shape, device="cuda", generator=gen)
        errs = {"o": rel_err(o.float(), ro.float()), "final_state": rel_err(ht, rht)}
        g_k = _grads(sig, x, o, ht, w, dht)
        g_r = _grads(sig, x, ro, rht, w, dht)
        errs.update({f"d{n}": rel_err(g_k[n].float(), g_r[n].float()) for n in g_k})
        ok = all(v <= (tol_grad if k.startswith("d") else tol_out) for k, v in errs.items())
        entry.update(ok=ok, errors={k: float(f"{v:.3e}") for k, v in errs.items()})
    except Exception as err:  # a compile failure is a result, not a crash
        ok = False
        entry.update(ok=False, error=f"{type(err).__name__}: {err}"[:2000], tb=traceback.format_exc()[-3000:])
    rep.data["correctness"].append(entry)
    rep.save()
    print(
        label, entry.get("dtype"), "OK" if ok else "FAIL", entry.get("errors", entry.get("error")), flush=True
    )
    return ok


def correctness(rep: Report) -> None:
    for name, sig in TAXONOMY_SIGS.items():
        K = 16 if sig.decay is Decay.CHANNEL else 64
        ok = True
        for dtype in (torch.float32, torch.bfloat16):
            x = random_core_inputs(
                sig, B=2, T=256, H=4, K=K, V=64, dtype=dtype, device="cuda", requires_grad=True
            )
            ok &= check(rep, f"{name} T256 K{K} V64", sig, x, dtype=dtype)
        # awkward sizes, several V-blocks, lengths 0 and 1, several checkpoints
        cu = torch.tensor([0, 0, 1, 6, 23, 90], dtype=torch.int32, device="cuda")
        x = random_core_inputs(
            sig, T=90, H=2, K=24, V=40, device="cuda", requires_grad=True, cu_seqlens=cu, seed=2
        )
        ok &= check(rep, f"{name} varlen K24 V40", sig, x, cfg={"BV": 16, "BV_bwd": 16, "CK": 16})
        ok &= decode_check(rep, name, sig)
        if not ok:
            rep.data["failed_sigs"].append(name)
    for name in ("key", "scalar_delta"):
        sig = TAXONOMY_SIGS[name]
        x = random_core_inputs(sig, B=1, T=40, H=2, K=256, V=256, device="cuda", requires_grad=True, seed=3)
        if not check(rep, f"{name} K256 V256", sig, x):
            rep.data["failed_sigs"].append(name)


def decode_check(rep: Report, name: str, sig: CoreSig) -> bool:
    try:
        x = random_core_inputs(sig, B=2, T=6, H=2, K=24, V=40, device="cuda", seed=4)
        o_full, ht_full = sequential.run(sig, x)
        state = x.initial_state.clone()
        errs = []
        for t in range(x.T):
            step = _time_slice(sig, x, t)
            o, state = sequential.decode_step(sig, step, state, inplace=True)
            errs.append(rel_err(o, o_full[:, t : t + 1]))
        errs.append(rel_err(state, ht_full))
        ok = max(errs) <= 2e-4
        entry = {"case": f"{name} decode_step", "ok": ok, "max_err": float(f"{max(errs):.3e}")}
    except Exception as err:
        ok, entry = False, {"case": f"{name} decode_step", "ok": False, "error": repr(err)[:2000]}
    rep.data["correctness"].append(entry)
    print(entry, flush=True)
    return ok


def _time_slice(sig, x, t):
    from dataclasses import replace

    def cut(v, static=False):
        return v if v is None or static else v[:, t : t + 1]

    return replace(
        x,
        q=cut(x.q, sig.query_static),
        k=cut(x.k, sig.key_static),
        v=cut(x.v),
        g=cut(x.g),
        gk=cut(x.gk),
        gv=cut(x.gv, sig.decay_static),
        beta=cut(x.beta),
        initial_state=None,
    )


def bench_inputs(sig: CoreSig, grad: bool):
    """BENCH_SHAPE in bf16 (per-channel rows at Mamba's state size N = K = 16)."""
    B, T, H, K, V = BENCH_SHAPE
    if sig.decay is Decay.CHANNEL:
        K = 16
    x = random_core_inputs(
        sig,
        B=B,
        T=T,
        H=H,
        K=K,
        V=V,
        dtype=torch.bfloat16,
        device="cuda",
        with_state=False,
        requires_grad=grad,
    )
    x.output_final_state = False
    return x


def time_fwd(sig, x, cfg) -> float:
    with torch.no_grad():
        return do_bench(lambda: sequential.run(sig, x, cfg), warmup=50, rep=300)


def time_fwdbwd(sig, x, cfg) -> float:
    do = torch.randn_like(x.v)
    params = [getattr(x, n) for n in NAMES if getattr(x, n) is not None and getattr(x, n).requires_grad]

    def step():
        o, _ = sequential.run(sig, x, cfg)
        torch.autograd.backward(o, do)

    return do_bench(step, warmup=50, rep=400, grad_to_none=params)


def _try(fn, *args) -> float | str:
    try:
        return fn(*args)
    except Exception as err:
        return f"error: {type(err).__name__}: {str(err)[:300]}"


def _sweep(rep: Report, section: str, name: str, timer, x, base: dict, grid: list[dict], reserve: float):
    """Time ``base`` updated by each entry of ``grid``; returns the best (config, ms)."""
    sig = TAXONOMY_SIGS[name]
    space = sequential.search_space(sig, BENCH_SHAPE)
    results = rep.data[section].setdefault(name, [])
    for change in grid:
        if rep.left() < reserve:
            break
        cfg = {**base, **change}
        why = space.valid(cfg)
        ms = f"skipped: {why}" if why else _try(timer, sig, x, cfg)
        results.append({**change, "ms": ms})
        print(name, section, change, ms, flush=True)
        rep.save()
    timed = [r for r in results if isinstance(r["ms"], float)]
    if not timed:
        return base, None
    best = min(timed, key=lambda r: r["ms"])
    return {**base, **{k: v for k, v in best.items() if k != "ms"}}, best["ms"]


def sweep(rep: Report) -> None:
    """Forward: (BV, warps) at prefetch 2, then prefetch 1 / 3 at the best; then the backward."""
    for name in ("scalar", "key"):
        if name in rep.data["failed_sigs"]:
            rep.data["sweep_fwd"][name] = "refused: correctness failed"
            continue
        sig = TAXONOMY_SIGS[name]
        base = sequential.default_config(sig, BENCH_SHAPE)
        x = bench_inputs(sig, grad=False)
        rep.data["best_fwd"][name + "_default"] = {"cfg": base, "ms": _try(time_fwd, sig, x, base)}
        grid = [{"BV": bv, "num_warps": w} for bv in (8, 16, 32, 64) for w in (1, 2, 4)]
        best, _ = _sweep(rep, "sweep_fwd", name, time_fwd, x, base, grid, reserve=170)
        best, ms = _sweep(rep, "sweep_fwd", name, time_fwd, x, best, [{"prefetch": 1}, {"prefetch": 3}], 160)
        rep.data["best_fwd"][name] = {"cfg": best, "ms": ms}
        rep.save()
    for name in ("scalar", "key"):
        if name not in rep.data["best_fwd"] or "cfg" not in rep.data["best_fwd"][name]:
            continue
        sig = TAXONOMY_SIGS[name]
        base = rep.data["best_fwd"][name]["cfg"]
        x = bench_inputs(sig, grad=True)
        grid = [{"BV_bwd": bv, "num_warps_bwd": w} for bv in (8, 16, 32) for w in (1, 2)]
        best, ms = _sweep(rep, "sweep_fwdbwd", name, time_fwdbwd, x, base, grid, reserve=60)
        rep.data["best_fwdbwd"][name] = {"cfg": best, "ms": ms}
        rep.save()


def others(rep: Report) -> None:
    for name, sig in TAXONOMY_SIGS.items():
        if name in ("scalar", "key") or rep.left() < 20:
            continue
        if name in rep.data["failed_sigs"]:
            rep.data["others"][name] = "refused: correctness failed"
            continue
        try:
            fwd = time_fwd(sig, bench_inputs(sig, grad=False), None)
            both = time_fwdbwd(sig, bench_inputs(sig, grad=True), None) if rep.left() > 20 else None
            rep.data["others"][name] = {"fwd_ms": fwd, "fwdbwd_ms": both}
        except Exception as err:
            rep.data["others"][name] = f"error: {type(err).__name__}: {str(err)[:300]}"
        print(name, rep.data["others"][name], flush=True)
        rep.save()


_CONST_INTS = ("BK", "BV", "CK")
_FLAGS = ("USE_H0", "STORE_HT", "IS_VARLEN", "SAVE_U", "USE_DHT")
_INTS = ("T", "H", "K", "V", "NTOK", "NCMAX")


def offline_compile(out: Path, K: int = 128, configs=((16, 1), (32, 2), (64, 4))) -> list[dict]:
    """Compile every kernel for sm_90 without a GPU (Triton's bundled ptxas), registers and spills.

    A compile error or a spill shows here before any GPU time is spent.
    """
    import os
    import re
    import subprocess

    from scandsl.lowering import sequential_launch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas")
    rows = []
    for name, sig in TAXONOMY_SIGS.items():
        KK = 16 if sig.decay is Decay.CHANNEL else K
        for prefetch in (1, 2):
            for role, kern in zip(("fwd", "bwd"), sequential_launch._kernels(sig, prefetch)):
                for BV, warps in configs:
                    types, const = {}, {}
                    for a in kern.arg_names:
                        if a in ("q", "k", "v", "o", "do"):
                            types[a] = "*bf16"
                        elif a == "cu_seqlens":
                            types[a] = "*i32"
                        elif a.endswith("_sk") or a.endswith("_on"):  # K-contiguous, present states
                            types[a] = "constexpr"
                            const[a] = 1
                        elif a.endswith("_sv"):
                            types[a] = "i32"
                        elif a == "scale":
                            types[a] = "fp32"
                        elif a in _INTS:
                            types[a] = "i32"
                        elif a in _CONST_INTS or a in _FLAGS:
                            types[a] = "constexpr"
                            const[a] = {"BK": triton.next_power_of_2(KK), "BV": BV, "CK": 32}.get(a, True)
                        else:
                            types[a] = "*fp32"
                    row = {
                        "sig": name,
                        "kernel": role,
                        "prefetch": prefetch,
                        "BV": BV,
                        "num_warps": warps,
                        "K": KK,
                    }
                    try:
                        src = ASTSource(
                            kern, types, constexprs={(kern.arg_names.index(a),): v for a, v in const.items()}
                        )
                        ck = triton.compile(
                            src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps}
                        )
                        ptx = re.sub(r"^\.version \S+", ".version 8.4", ck.asm["ptx"], flags=re.M)
                        (out / "k.ptx").write_text(ptx)
                        res = subprocess.run(
                            [
                                ptxas,
                                "--gpu-name",
                                "sm_90a",
                                "-v",
                                str(out / "k.ptx"),
                                "-o",
                                str(out / "k.cubin"),
                            ],
                            capture_output=True,
                            text=True,
                        )
                        regs = re.search(r"Used (\d+) registers", res.stderr)
                        spill = re.search(r"(\d+) bytes spill stores", res.stderr)
                        row.update(
                            regs=int(regs.group(1)) if regs else None,
                            spill_bytes=int(spill.group(1)) if spill else None,
                            shared=ck.metadata.shared,
                            ptxas_error=None if res.returncode == 0 else res.stderr[-500:],
                        )
                    except Exception as err:
                        row["error"] = f"{type(err).__name__}: {str(err)[:500]}"
                    rows.append(row)
                    print(row, flush=True)
    (out / "sequential_offline_compile.json").write_text(json.dumps(rows, indent=1))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=300.0, help="seconds before the sweeps stop")
    ap.add_argument("--skip-correctness", action="store_true")
    ap.add_argument(
        "--offline-compile", action="store_true", help="no GPU: compile for sm_90 and report registers"
    )
    args = ap.parse_args()
    if args.offline_compile:
        args.out.mkdir(parents=True, exist_ok=True)
        offline_compile(args.out)
        return
    rep = Report(args.out / "sequential_gpu.json", args.budget, correctness=[], failed_sigs=[], sweep_fwd={}, best_fwd={}, sweep_fwdbwd={}, best_fwdbwd={}, others={})
    if not args.skip_correctness:
        correctness(rep)
    sweep(rep)
    others(rep)
    rep.save()
    print(
        json.dumps({k: rep.data[k] for k in ("failed_sigs", "best_fwd", "best_fwdbwd", "others")}, indent=1)
    )


if __name__ == "__main__":
    main()
