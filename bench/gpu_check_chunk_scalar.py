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
import itertools
import json
import os
import re
import subprocess
import tempfile
import time
import traceback
from pathlib import Path

import torch
import triton
from scandsl.lowering import chunk_scalar
from scandsl.lowering.chunk_scalar_launch import Plan, bwd_meta, fwd_meta, launch_bwd, launch_fwd

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
ROLE_OUT = {"dq": (0,), "dk": (1, 3), "dv": (2,)}  # indices into launch_bwd's result


class Report:
    def __init__(self, path: Path, budget: float, device: str):
        self.path = path
        self.start = time.time()
        self.budget = budget
        self.data: dict = {
            "device": device,
            "triton": triton.__version__,
            "torch": torch.__version__,
            "shape": dict(B=B, T=T, H=H, K=K, V=V, dtype=str(LOW).replace("torch.", "")),
            "floors": floors(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.time() - self.start)

    def put(self, section: str, key: str, value) -> None:
        self.data.setdefault(section, {})[key] = value
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.start, 1)
        self.path.write_text(json.dumps(self.data, indent=1))


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


def check(rep: Report, label: str, sig: CoreSig, x: CoreInputs, dtype, grads=True) -> bool:
    entry = {"case": label, "dtype": str(dtype).replace("torch.", "")}
    tol_out, tol_grad = TOLERANCES[dtype]
    try:
        o, ht = chunk_scalar.run(sig, x)
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
        ok = False
        entry.update(ok=False, error=f"{type(err).__name__}: {err}"[:2000], tb=traceback.format_exc()[-3000:])
    rep.data.setdefault("correctness", []).append(entry)
    rep.save()
    print(label, entry["dtype"], "OK" if ok else "FAIL", entry.get("errors", entry.get("error")), flush=True)
    return ok


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


def sweep(rep: Report, name: str, kind: str, configs: list[dict], ref) -> list[tuple[float, dict]]:
    """kind: "fwd", or a backward launch of roles joined by "+" ("dq", "dq+dk+dv")."""
    sig, x, do = SIGS[name], target_inputs(SIGS[name]), target_do()
    o = launch_fwd(plan_for(sig, base_config(sig)), x.q, x.k, x.v, x.g, None, None, LOW, False)[0]
    results = []
    for over in configs:
        if rep.left() < 45:
            break
        key = json.dumps(over, sort_keys=True)
        try:
            P = plan_for(sig, {**base_config(sig), **over})
            if kind == "fwd":
                fn = lambda P=P: launch_fwd(P, x.q, x.k, x.v, x.g, None, None, LOW, False)
                errs = [rel_err(fn()[0].float(), ref[0])]
            else:
                roles = tuple(kind.split("+"))
                fn = lambda P=P, r=roles: launch_bwd(
                    P, x.q, x.k, x.v, x.g, o, None, None, None, do, None, roles=r
                )
                got = fn()
                idx = sorted({i for r in roles for i in ROLE_OUT[r] if ref[1][i] is not None})
                errs = [rel_err(got[i].float(), ref[1][i]) for i in idx]
            if max(errs) > 2e-2:
                rep.put(f"sweep {name} {kind}", key, f"wrong: rel errs {errs}")
                continue
            ms = bench(fn)
            results.append((ms, over))
            rep.put(f"sweep {name} {kind}", key, round(ms, 4))
        except Exception as err:
            rep.put(f"sweep {name} {kind}", key, f"{type(err).__name__}: {str(err)[:300]}")
        print(kind, name, key, rep.data[f"sweep {name} {kind}"][key], flush=True)
    return sorted(results, key=lambda r: r[0])


def fwd_configs() -> list[dict]:
    if SMOKE:
        return [{"chunk": 16, "block_v": 16}, {"chunk": 32, "block_v": 32}]
    grid = [(64, bv, w, s) for bv, w, s in itertools.product((32, 64, 128), (4, 8), (1, 2, 3))]
    grid += [(128, bv, 8, s) for bv, s in itertools.product((32, 64), (1, 2))]
    grid += [(32, bv, 4, 2) for bv in (32, 64)]
    return [{"chunk": c, "block_v": bv, "num_warps": w, "num_stages": s} for c, bv, w, s in grid]


def bwd_configs(role: str) -> list[dict]:
    key = ROLE_BLOCK[role]
    if SMOKE:
        return [{"bwd_chunk": 16, "bwd_num_warps": 4, "bwd_num_stages": 2, key: b} for b in (16, 32)]
    grid = [(64, b, w, s) for b, w, s in itertools.product((32, 64, 128), (4, 8), (1, 2))]
    grid += [(32, b, w, 2) for b, w in ((64, 4), (128, 4), (128, 8))]
    return [{"bwd_chunk": c, "bwd_num_warps": w, "bwd_num_stages": s, key: b} for c, b, w, s in grid]


def choose_bwd(rep: Report, name: str, ref) -> dict:
    """Best tiles per role, then the one-launch pairing of the leaders against three launches."""
    best = {role: sweep(rep, name, role, bwd_configs(role), ref) for role in ("dq", "dk", "dv")}
    if not all(best.values()):
        return {}
    fused = []
    for a, b, c in itertools.product(best["dq"][:2], best["dk"][:2], best["dv"][:2]):
        cfgs = (a[1], b[1], c[1])
        if a[1][ROLE_BLOCK["dq"]] == b[1][ROLE_BLOCK["dk"]] and len({x["bwd_chunk"] for x in cfgs}) == 1:
            warps = max(x["bwd_num_warps"] for x in cfgs)
            stages = min(x["bwd_num_stages"] for x in cfgs)
            fused.append(
                {**a[1], **c[1], "bwd_num_warps": warps, "bwd_num_stages": stages, "bwd_fused": True}
            )
    split_ms = sum(best[r][0][0] for r in best)
    rep.put("bwd", "three launches, sum of role bests (ms)", split_ms)
    best_fused = sweep(rep, name, "dq+dk+dv", fused, ref)
    if best_fused and best_fused[0][0] <= split_ms:
        return best_fused[0][1]
    # three launches share one warps/stages setting: the slowest role's
    slowest = max(best, key=lambda r: best[r][0][0])
    return {**best["dv"][0][1], **best["dk"][0][1], **best[slowest][0][1], "bwd_fused": False}


def timing(rep: Report, name: str, cfg: dict) -> None:
    sig = SIGS[name]
    x = target_inputs(sig, requires_grad=True)
    do = target_do()
    inputs = [t for t in (x.q, x.k, x.v, x.g) if t is not None]

    def fwd():
        with torch.no_grad():
            return chunk_scalar.run(sig, x, cfg)

    def fwdbwd():
        o, _ = chunk_scalar.run(sig, x, cfg)
        torch.autograd.backward(o, do)

    res = {"fwd_ms": bench(fwd, warmup=20, rep_ms=200),
           "fwdbwd_ms": bench(fwdbwd, warmup=10, rep_ms=200, grad_to_none=inputs),
           "config": cfg, "anchor": ANCHORS.get(name.replace("_before", ""))}  # fmt: skip
    rep.put("timing", name, res)
    print("timing", name, res, flush=True)


def gpu_main(rep: Report) -> None:
    print("floors", rep.data["floors"], flush=True)
    ok = correctness(rep)
    rep.data["correct"] = ok
    rep.save()
    best: dict[str, dict] = {}
    scalar_fwd: list[tuple[float, dict]] = []
    bwd_cfg: dict = {}
    for name in ("scalar", "none"):
        if not ok[name] or rep.left() < 60:
            print("skipping the sweep of", name, flush=True)
            continue
        ref = truth(name)
        if name == "scalar":
            best_fwd = scalar_fwd = sweep(rep, name, "fwd", fwd_configs(), ref)
            bwd_cfg = choose_bwd(rep, name, ref)
        else:  # NONE: the few best SCALAR forward tiles, and the SCALAR backward tiles
            best_fwd = sweep(rep, name, "fwd", [c for _, c in scalar_fwd[:4]], ref)
        best[name] = {**(best_fwd[0][1] if best_fwd else {}), **bwd_cfg}
        rep.put("best", name, best[name])
    for name in ("scalar", "none", "scalar_before"):
        key = name.replace("_before", "")
        if ok.get(name) and key in best and rep.left() > 15:
            try:
                timing(rep, name, {**base_config(SIGS[name]), **best[key]})
            except Exception as err:
                rep.put("timing", name, f"{type(err).__name__}: {str(err)[:500]}")
    print(json.dumps({k: rep.data.get(k) for k in ("best", "timing", "floors", "correct")}, indent=1))


# ----------------------------------------------------------------------------- ahead of time
def aot_compile(kernel, meta: dict, dtype: str) -> dict:
    """Compile ``kernel`` for sm_90 without a GPU; registers / spill stack / shared memory."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    meta = dict(meta)
    options = {"num_warps": meta.pop("num_warps"), "num_stages": meta.pop("num_stages")}
    fp32_ptrs = {"g", "dg", "h0", "ht", "dht", "dh0"}
    sig = {}
    for name in kernel.arg_names:
        if name in meta:
            sig[name] = "constexpr"
        elif name == "cu_seqlens":
            sig[name] = "*i32"
        elif name == "scale":
            sig[name] = "fp32"
        elif name in ("T", "H", "NTH"):
            sig[name] = "i32"
        else:
            sig[name] = "*fp32" if name in fp32_ptrs else f"*{dtype}"
    # what the JIT would specialise at the timed shape: 16-byte aligned pointers, sizes % 16 == 0
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names)
             if sig[n].startswith("*") or n in ("T", "H", "NTH")}  # fmt: skip
    constexprs = {(kernel.arg_names.index(n),): v for n, v in meta.items()}
    t0 = time.time()
    ck = triton.compile(ASTSource(kernel, sig, constexprs=constexprs, attrs=attrs),
                        target=GPUTarget("cuda", 90, 128), options=options)  # fmt: skip
    tool = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as fh:
        fh.write(ck.asm["cubin"])
    try:
        usage = subprocess.run(
            [str(tool), "--dump-resource-usage", fh.name], capture_output=True, text=True
        ).stdout
    finally:
        os.unlink(fh.name)
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    return {"regs": int(m.group(1)) if m else None, "spill_stack": int(m.group(2)) if m else None,
            "smem": ck.metadata.shared, "wgmma": ck.asm["ptx"].count("wgmma.mma_async"),
            "compile_s": round(time.time() - t0, 1)}  # fmt: skip


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=320.0)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU interpreter")
    ap.add_argument("--aot", action="store_true", help="compile the sweeps for sm_90 on the CPU")
    ap.add_argument("--kv", default="128,128", help="K,V of the swept shape (default 128,128)")
    args = ap.parse_args()
    global B, T, H, K, V, DEV, LOW, SMOKE
    K, V = (int(n) for n in args.kv.split(","))
    if args.smoke:
        B, T, H, K, V, DEV, LOW, SMOKE = 1, 40, 2, 32, 32, "cpu", torch.float16, True
    if args.aot:
        rep = Report(args.out / "chunk_scalar_aot.json", 1e9, "none: sm_90 ahead-of-time compile")
        aot_main(rep)
        return
    device = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (interpreter smoke run)"
    gpu_main(Report(args.out / "chunk_scalar_gpu.json", args.budget, device))


if __name__ == "__main__":
    main()
