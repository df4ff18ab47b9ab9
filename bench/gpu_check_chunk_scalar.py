"""GPU check of the chunked scalar-decay kernels: compile, correctness (fp32, bf16), timing sweep.

Run on the GPU machine from the repository root:

    pip install --no-deps --no-build-isolation -e . -q
    python bench/gpu_check_chunk_scalar.py --out $OUT [--budget 320] [--anchors]

1. decay NONE / SCALAR, read-out after / before, fp32 and bf16: outputs, final state and every
   gradient against ``core_reference`` (fp32) at K=V=128, odd K=100 / V=72, K=V=256 and varlen
   with lengths 0 and 1; a T=65536 SCALAR forward against the reference (no overflow).
2. at B=4 T=4096 H=16 K=V=128 bf16: a forward sweep (chunk, block_v, warps, stages) and a
   backward sweep per program role (dq/dk, dv), each config checked against an fp32 run before
   it is timed; then forward and forward+backward through ``chunk_scalar.run`` with the best.
3. with ``--anchors`` (and ``.whl`` carried): flash-linear-attention's chunk kernels, same inputs.

Floors (printed and stored): memory = bytes that must move / 3.0 TB/s; FLOPs of the fused-chunk
algorithm / 690 TFLOP/s. Results go to ``<out>/chunk_scalar_gpu.json`` after every item.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import traceback
from pathlib import Path

import torch
import triton
from scandsl.lowering import chunk_scalar
from scandsl.lowering.chunk_scalar_launch import Plan, launch_bwd, launch_fwd
from triton.testing import do_bench

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
ANCHORS = {  # flash-linear-attention 0.6.0 / mamba_ssm on one H100 (docs: design.md), ms
    "none": {"fwd": 0.244, "fwdbwd": 1.30, "ref": "fla chunk_linear_attn"},
    "scalar": {"fwd": 0.392, "fwdbwd": 1.71, "ref": "fla chunk_retention (fwd 0.514 chunk_simple_gla, "
               "mamba_chunk_scan_combined 0.524 / 3.88)"},
}  # fmt: skip


class Report:
    def __init__(self, out: Path, budget: float):
        self.path = out / "chunk_scalar_gpu.json"
        self.start = time.time()
        self.budget = budget
        self.data: dict = {
            "device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu (interpreter smoke run)",
            "triton": triton.__version__,
            "torch": torch.__version__,
            "shape": dict(B=B, T=T, H=H, K=K, V=V, dtype="bfloat16"),
            "floors": floors(),
            "correctness": [],
            "sweep_fwd": {},
            "sweep_bwd": {},
            "best": {},
            "timing": {},
            "anchors_measured": {},
        }
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.time() - self.start)

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.start, 1)
        self.path.write_text(json.dumps(self.data, indent=1))


def floors() -> dict:
    tensor = B * T * H * K * 2  # one bf16 [B, T, H, 128] tensor, bytes
    c = 64
    per_chunk_fwd = 2 * c * c * K + 2 * c * c * V + 2 * 2 * c * K * V  # scores, S@v, q@h, h update
    per_chunk_bwd = per_chunk_fwd * 3  # dq/dk/dv programs: ~3x the forward's products
    chunks = B * H * T // c
    return {
        "mem_fwd_ms": 4 * tensor / 3.0e12 * 1e3,  # q, k, v in, o out
        "mem_fwdbwd_ms": 11 * tensor / 3.0e12 * 1e3,  # + q, k, v, do in, dq, dk, dv out
        "flop_fwd_ms": per_chunk_fwd * chunks / 690e12 * 1e3,
        "flop_fwdbwd_ms": (per_chunk_fwd + per_chunk_bwd) * chunks / 690e12 * 1e3,
        "target_scalar_fwd_ms (3x mem floor)": 3 * 4 * tensor / 3.0e12 * 1e3,
    }


def _grads(x, o, ht, w, dht):
    named = [(n, getattr(x, n)) for n in NAMES if getattr(x, n) is not None]
    loss = (o.float() * w).sum() + (ht * dht).sum()
    return dict(zip([n for n, _ in named], torch.autograd.grad(loss, [t for _, t in named])))


def check(rep: Report, label: str, sig: CoreSig, x: CoreInputs, dtype, cfg=None, grads=True) -> bool:
    entry = {"case": label, "dtype": str(dtype).replace("torch.", "")}
    tol_out, tol_grad = TOLERANCES[dtype]
    try:
        o, ht = chunk_scalar.run(sig, x, cfg)
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
    rep.data["correctness"].append(entry)
    rep.save()
    print(label, entry["dtype"], "OK" if ok else "FAIL", entry.get("errors", entry.get("error")), flush=True)
    return ok


def correctness(rep: Report) -> dict[str, bool]:
    ok = {name: True for name in SIGS}
    cu = torch.tensor([0, 0, 1, 70, 200, 333], dtype=torch.int32, device=DEV)
    cases = [  # (sig names, label, kwargs)
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
    x = random_core_inputs(SIGS["scalar"], B=1, T=30 if SMOKE else 300, H=2, K=128, V=128, dtype=torch.float16,
                           device=DEV, requires_grad=True)  # fmt: skip
    ok["scalar"] &= check(rep, "scalar T300 K128 V128", SIGS["scalar"], x, torch.float16)
    # long sequence: log-decays only enter as exp of non-positive within-chunk differences
    x = random_core_inputs(
        SIGS["scalar"], B=1, T=200 if SMOKE else 65536, H=1, K=64, V=64, device=DEV, seed=4
    )
    ok["scalar"] &= check(rep, "scalar T65536 K64 V64 fwd", SIGS["scalar"], x, torch.float32, grads=False)
    return ok


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


def plan_for(sig, cfg) -> Plan:
    return Plan(sig, cfg, B, T, H, K, V, B, False, K**-0.5)


def bench(fn, rep_ms=40, warmup=10, grad_to_none=None) -> float:
    if SMOKE:  # no CUDA events on the CPU: one timed call is enough to exercise the path
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return float(do_bench(fn, warmup=warmup, rep=rep_ms, grad_to_none=grad_to_none))


def sweep_fwd(rep: Report, name: str, configs: list[dict], truth: torch.Tensor) -> list[tuple[float, dict]]:
    sig, x = SIGS[name], target_inputs(SIGS[name])
    base = chunk_scalar.default_config(sig, Shape(B, T, H, K, V))
    results = []
    for over in configs:
        if rep.left() < 60:
            break
        cfg = {**base, **over}
        key = json.dumps(over, sort_keys=True)
        try:
            P = plan_for(sig, cfg)
            fn = lambda P=P: launch_fwd(P, x.q, x.k, x.v, x.g, None, None, LOW, False)
            err = rel_err(fn()[0].float(), truth)
            if err > 1e-2:
                rep.data["sweep_fwd"].setdefault(name, {})[key] = f"wrong: rel err {err:.2e}"
                continue
            ms = bench(fn)
            results.append((ms, over))
            rep.data["sweep_fwd"].setdefault(name, {})[key] = round(ms, 4)
        except Exception as err:
            rep.data["sweep_fwd"].setdefault(name, {})[key] = f"{type(err).__name__}: {str(err)[:300]}"
        rep.save()
        print("fwd", name, key, rep.data["sweep_fwd"][name][key], flush=True)
    return sorted(results, key=lambda r: r[0])


def sweep_bwd(rep: Report, name: str, role: str, configs: list[dict], truth) -> list[tuple[float, dict]]:
    sig, x = SIGS[name], target_inputs(SIGS[name])
    gen = torch.Generator(device=DEV).manual_seed(1)
    do = torch.randn(B, T, H, V, device=DEV, generator=gen).to(LOW)
    base = chunk_scalar.default_config(sig, Shape(B, T, H, K, V))
    results = []
    for over in configs:
        if rep.left() < 40:
            break
        cfg = {**base, **over}
        key = json.dumps(over, sort_keys=True)
        try:
            P = plan_for(sig, cfg)
            roles = None if role == "fused" else (role,)
            fn = lambda P=P, roles=roles: launch_bwd(P, x.q, x.k, x.v, x.g, None, None, do, None, roles=roles)
            got = fn()
            picks = {"dqdk": (0, 1, 3), "dv": (2,), "fused": (0, 1, 2, 3)}[role]
            errs = [rel_err(got[i].float(), truth[i]) for i in picks if truth[i] is not None]
            if max(errs) > 2e-2:
                rep.data["sweep_bwd"].setdefault(f"{name} {role}", {})[key] = f"wrong: rel errs {errs}"
                continue
            ms = bench(fn)
            results.append((ms, over))
            rep.data["sweep_bwd"].setdefault(f"{name} {role}", {})[key] = round(ms, 4)
        except Exception as err:
            rep.data["sweep_bwd"].setdefault(f"{name} {role}", {})[key] = (
                f"{type(err).__name__}: {str(err)[:300]}"
            )
        rep.save()
        print("bwd", name, role, key, rep.data["sweep_bwd"][f"{name} {role}"][key], flush=True)
    return sorted(results, key=lambda r: r[0])


def fp32_truth(name: str):
    """fp32-input kernel run (validated against the reference above) on the bf16 inputs."""
    sig, x = SIGS[name], target_inputs(SIGS[name])
    gen = torch.Generator(device=DEV).manual_seed(1)
    do = torch.randn(B, T, H, V, device=DEV, generator=gen).to(LOW)
    f = lambda t: None if t is None else t.float()
    cfg = chunk_scalar.default_config(sig, Shape(B, T, H, K, V))
    P = plan_for(sig, cfg)
    o, _ = launch_fwd(P, f(x.q), f(x.k), f(x.v), x.g, None, None, torch.float32, False)
    grads = launch_bwd(P, f(x.q), f(x.k), f(x.v), x.g, None, None, f(do), None)
    return o, [f(t) for t in grads]


def timing(rep: Report, name: str, cfg: dict) -> None:
    sig = SIGS[name]
    x = target_inputs(sig, requires_grad=True)
    do = torch.randn(B, T, H, V, device=DEV).to(LOW)
    inputs = [t for t in (x.q, x.k, x.v, x.g) if t is not None]

    def fwd():
        with torch.no_grad():
            return chunk_scalar.run(sig, x, cfg)

    def fwdbwd():
        o, _ = chunk_scalar.run(sig, x, cfg)
        torch.autograd.backward(o, do)

    res = {"fwd_ms": bench(fwd, warmup=20, rep_ms=200),
           "fwdbwd_ms": bench(fwdbwd, warmup=10, rep_ms=200, grad_to_none=inputs),
           "config": cfg}  # fmt: skip
    anchor = ANCHORS.get(name.replace("_before", ""))
    if anchor:
        res["anchor"] = anchor
    rep.data["timing"][name] = res
    rep.save()
    print("timing", name, res, flush=True)


def fwd_configs() -> list[dict]:
    if SMOKE:
        return [{"chunk": 16, "block_v": 16}, {"chunk": 32, "block_v": 32}]
    grid = [(64, bv, w, s) for bv, w, s in itertools.product((32, 64, 128), (4, 8), (1, 2, 3))]
    grid += [(128, bv, 8, s) for bv, s in itertools.product((32, 64), (1, 2))]
    out = []
    for c, bv, w, s in grid:
        cfg = {"chunk": c, "block_v": bv, "num_warps": w, "num_stages": s}
        full = {**chunk_scalar.default_config(SIGS["scalar"], Shape(B, T, H, K, V)), **cfg}
        if chunk_scalar._check_config(full, Shape(B, T, H, K, V)) is None:
            out.append(cfg)
    return out


def bwd_configs(role: str) -> list[dict]:
    if SMOKE:
        key = "bwd_block_k" if role == "dqdk" else "bwd_block_v"
        return [{"bwd_chunk": 16, "bwd_num_warps": 4, "bwd_num_stages": 2, key: b} for b in (16, 32)]
    grid = [(64, blk, w, s) for blk, w, s in itertools.product((32, 64, 128), (4, 8), (1, 2))]
    grid += [(32, 128, 4, 2)]  # a small chunk frees registers for the widest block
    out = []
    for c, blk, w, s in grid:
        cfg = {"bwd_chunk": c, "bwd_num_warps": w, "bwd_num_stages": s,
               ("bwd_block_k" if role == "dqdk" else "bwd_block_v"): blk}  # fmt: skip
        full = {**chunk_scalar.default_config(SIGS["scalar"], Shape(B, T, H, K, V)), **cfg}
        if chunk_scalar._check_config(full, Shape(B, T, H, K, V)) is None:
            out.append(cfg)
    return out


def choose_bwd(rep: Report, name: str, g_truth) -> dict:
    """Best tiles per role, then the one-launch (fused) pairing of the leaders against two launches."""
    dqdk = sweep_bwd(rep, name, "dqdk", bwd_configs("dqdk"), g_truth)
    dv = sweep_bwd(rep, name, "dv", bwd_configs("dv"), g_truth)
    if not (dqdk and dv):
        return {}
    fused = []
    for (_, a), (_, b) in itertools.product(dqdk[:2], dv[:2]):
        if a["bwd_chunk"] == b["bwd_chunk"]:
            w = max(a["bwd_num_warps"], b["bwd_num_warps"])
            st = min(a["bwd_num_stages"], b["bwd_num_stages"])
            fused.append({**a, **b, "bwd_num_warps": w, "bwd_num_stages": st, "bwd_fused": True})
    best_fused = sweep_bwd(rep, name, "fused", fused, g_truth)
    split = {**dv[0][1], **dqdk[0][1], "bwd_fused": False}  # warps / stages / chunk: the dq/dk ones
    rep.data["bwd_split_ms (sum of role bests)"] = dqdk[0][0] + dv[0][0]
    if best_fused and best_fused[0][0] <= dqdk[0][0] + dv[0][0]:
        return best_fused[0][1]
    return split


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=320.0)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU interpreter")
    args = ap.parse_args()
    if args.smoke:
        global B, T, H, K, V, DEV, LOW, SMOKE
        B, T, H, K, V, DEV, LOW, SMOKE = 1, 40, 2, 32, 32, "cpu", torch.float16, True
    rep = Report(args.out, args.budget)
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
        o_truth, g_truth = fp32_truth(name)
        if name == "scalar":
            best_fwd = scalar_fwd = sweep_fwd(rep, name, fwd_configs(), o_truth)
            bwd_cfg = choose_bwd(rep, name, g_truth)
        else:  # NONE: the few best SCALAR forward tiles, and the SCALAR backward tiles
            best_fwd = sweep_fwd(rep, name, [c for _, c in scalar_fwd[:4]], o_truth)
        best[name] = {**(best_fwd[0][1] if best_fwd else {}), **bwd_cfg}
        rep.data["best"][name] = best[name]
        rep.save()
    for name in ("scalar", "none", "scalar_before"):
        key = name.replace("_before", "")
        if ok.get(name) and key in best and rep.left() > 15:
            try:
                timing(rep, name, best[key])
            except Exception as err:
                rep.data["timing"][name] = f"{type(err).__name__}: {str(err)[:500]}"
                rep.save()
    print(json.dumps({k: rep.data[k] for k in ("best", "timing", "floors", "correct")}, indent=1))


if __name__ == "__main__":
    main()
