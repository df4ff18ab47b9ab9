"""GPU check of the scan strategy: compile + correctness (fp32, bf16) + timing at the Mamba-1 shape.

Run on the GPU machine from the repository root:

    python3 -m pip install --no-deps --no-build-isolation -e . -q
    python3 bench/gpu_check_scan.py --out $OUT [--budget 330] [--split]

1. ``channel`` and ``channel_static``, compiled, fp32 and bf16 and varlen, B=2 T=67 H=2 N=K=16
   V=40: outputs, final state and every gradient against ``core_reference`` (the other
   non-delta rows, + BEFORE variants, follow after the timings while the budget lasts);
2. Mamba-1 shape (B=4, T=4096, H=16, V=128 -> 2048 channels, N=K=16, bf16 q/k/v and dt=-gv):
   forward sweep over tiles for ``channel`` and ``channel_static`` (S4), each config's
   output checked against a batched fp32 PyTorch loop first; fwd+bwd sweep over backward
   tiles; gradients of the best config against the PyTorch loop's autograd at T=512;
3. the PyTorch loop itself as a baseline, timed at T=512 and extrapolated linearly to 4096.

``--split`` adds, right after step 1, the split forward (``fwd_mode="split"``): the small checks
again with ``split_L=32`` (several chunks at T=67), then at the Mamba-1 shape the default
forward (walk) and the split forward for each ``split_L`` in ``SPLIT_LS`` with the default's
tiles, each split output and final state checked against the walk's before it is timed, and
forward+backward for the walk and the fastest ``split_L`` (section ``split`` of the report).

Results go to ``<out>/scan_gpu.json`` (rewritten after every item, so a timeout keeps them).
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from scandsl.bench._gpu_check import Report
from scandsl.lowering import scan
from triton.testing import do_bench

from scandsl._core import CoreInputs, CoreSig, Decay, Readout, Shape, core_reference
from scandsl.testing import TAXONOMY_SIGS, TOLERANCES, random_core_inputs, rel_err

DEVICE = "cuda"
MAMBA = Shape(B=4, T=4096, H=16, K=16, V=128)
FLOOR_MS = {"channel": 0.067, "channel_static": 0.045}  # bytes moved once at 3.0 TB/s
SIGS = {n: s for n, s in TAXONOMY_SIGS.items() if scan.supports(s) is None}
SIGS["channel_before"] = CoreSig(decay=Decay.CHANNEL, readout=Readout.BEFORE)
SIGS["none_before"] = CoreSig(readout=Readout.BEFORE)
SPLIT_LS = (64, 128, 256, 512, 1024)


def _grads(sig, x, o, ht, seed=0):
    names = [n for n, t in x.tensors().items() if t.requires_grad]
    gen = torch.Generator(device=o.device).manual_seed(seed)
    w = torch.randn(o.shape, generator=gen, device=o.device)
    loss = (o.float() * w).sum()
    if ht is not None:
        loss = loss + (ht * torch.randn(ht.shape, generator=gen, device=o.device)).sum()
    return dict(zip(names, torch.autograd.grad(loss, [getattr(x, n) for n in names])))


def check_small(
    rep: Report, names: list[str], bf16: list[str], varlen: list[str], config: dict | None = None
) -> None:
    """Outputs, final state and gradients against ``core_reference``; ``config`` over the defaults."""
    cases = [(n, torch.float32, None) for n in names] + [(n, torch.bfloat16, None) for n in bf16]
    cases += [(n, torch.float32, torch.tensor([0, 0, 1, 6, 67])) for n in varlen]
    for name, dtype, cu in cases:
        if rep.left() < 15:
            rep.data.setdefault("skipped", []).append(f"{name} {dtype} varlen={cu is not None}")
            continue
        sig = SIGS[name]
        entry = {"sig": name, "dtype": str(dtype), "varlen": cu is not None, "config": config}
        try:
            K = 16 if sig.decay is Decay.CHANNEL else 24
            kw = dict(B=2, T=67, H=2, K=K, V=40, dtype=dtype, device=DEVICE, requires_grad=True, seed=1)
            x = random_core_inputs(sig, cu_seqlens=cu, **kw)
            t0 = time.time()
            o, ht = scan.run(sig, x, config)
            got = _grads(sig, x, o, ht)
            torch.cuda.synchronize()
            entry["first_call_s"] = round(time.time() - t0, 2)
            ro, rht = core_reference(sig, x)
            ref = _grads(sig, x, ro, rht)
            errs = {"o": rel_err(o.float(), ro.float()), "ht": rel_err(ht, rht)}
            errs.update({f"d{n}": rel_err(got[n].float(), ref[n].float()) for n in ref})
            tol_o, tol_g = TOLERANCES[dtype]
            entry["errors"] = {k: float(f"{v:.3e}") for k, v in errs.items()}
            entry["ok"] = all(v <= (tol_o if k in ("o", "ht") else tol_g) for k, v in errs.items())
        except Exception:  # noqa: BLE001 - a failure is a result here
            entry["ok"], entry["error"] = False, traceback.format_exc()[-1500:]
        rep.data["correctness"].append(entry)
        rep.save()


# ---------------------------------------------------------------- Mamba-1 shape
def mamba_inputs(sig: CoreSig, T: int, grad: bool) -> CoreInputs:
    B, H, K, V = MAMBA.B, MAMBA.H, MAMBA.K, MAMBA.V
    gen = torch.Generator(device=DEVICE).manual_seed(0)

    def rnd(*shape, scale=1.0, dtype=torch.bfloat16):
        t = (torch.randn(*shape, generator=gen, device=DEVICE) * scale).to(dtype)
        return t.requires_grad_(grad)

    dt_shape = (H, V) if sig.decay_static else (B, T, H, V)
    dt = F.softplus(torch.randn(*dt_shape, generator=gen, device=DEVICE) - 3.0)  # Mamba's dt
    static = torch.float32
    return CoreInputs(
        q=rnd(H, V, K, dtype=static) if sig.query_static else rnd(B, T, H, K),
        k=rnd(H, V, K, scale=0.5, dtype=static) if sig.key_static else rnd(B, T, H, K, scale=0.25),
        v=rnd(B, T, H, V),
        gv=(-dt).to(torch.float32 if sig.decay_static else torch.bfloat16).requires_grad_(grad),
        A=torch.arange(1, K + 1, device=DEVICE, dtype=torch.float32).repeat(H, V, 1).requires_grad_(grad),
        scale=1.0,
    )


def torch_loop(sig: CoreSig, x: CoreInputs) -> torch.Tensor:
    """The recurrence as a batched fp32 PyTorch loop over time (the baseline and the big-shape oracle)."""
    B, T, H, V, K = x.B, x.T, x.H, x.V, x.K
    S = torch.zeros(B, H, V, K, device=DEVICE)
    A, outs = x.A.float(), []
    a_static = torch.exp(x.gv.float()[..., None] * A) if sig.decay_static else None
    for t in range(T):
        a = a_static if sig.decay_static else torch.exp(x.gv[:, t].float()[..., None] * A)
        k = x.k.float() if sig.key_static else x.k[:, t].float()[:, :, None, :]
        S = a * S + x.v[:, t].float()[..., None] * k
        q = x.q.float() if sig.query_static else x.q[:, t].float()[:, :, None, :]
        outs.append((S * q).sum(-1) * x.scale)
    return torch.stack(outs, 1)


def _cfg(fwd: tuple, bwd: tuple | None = None) -> dict:
    """(BT, BV, num_warps) forward / backward tiles, BK = N = 16, as a full scan config."""
    b = bwd or (8, 8, 1)
    cfg = {"BT": fwd[0], "BK": 16, "BV": fwd[1], "num_warps": fwd[2], "num_stages": 1}
    cfg.update(bwd_BT=b[0], bwd_BK=16, bwd_BV=b[1], bwd_num_warps=b[2], bwd_num_stages=1)
    return cfg


def _time_fwd_bwd(sig, xg, cfg: dict, do, names: list[str]) -> dict:
    """{"ms": median forward + backward time of ``scan.run`` with ``cfg``} or {"error": ...}."""

    def step():
        for n in names:
            getattr(xg, n).grad = None
        o, _ = scan.run(sig, xg, cfg)
        o.backward(do)

    try:
        return {"ms": round(do_bench(step, return_mode="median"), 4)}
    except Exception:  # noqa: BLE001
        return {"error": traceback.format_exc()[-800:]}


def mamba(rep: Report, name: str, fwd_grid: list, bwd_grid: list) -> None:
    sig = SIGS[name]
    res = rep.data["mamba"].setdefault(name, {"floor_ms": FLOOR_MS[name], "fwd": [], "fwdbwd": []})
    x = mamba_inputs(sig, MAMBA.T, grad=False)
    with torch.no_grad():
        ref = torch_loop(sig, x)
    best = None
    for fwd in fwd_grid:
        if rep.left() < 60:
            break
        cfg, entry = _cfg(fwd), {"fwd": fwd}
        try:
            with torch.no_grad():
                o, _ = scan.run(sig, x, cfg)
                entry["err"] = float(f"{rel_err(o.float(), ref):.3e}")
                if entry["err"] <= TOLERANCES[torch.bfloat16][0]:
                    entry["ms"] = round(do_bench(lambda c=cfg: scan.run(sig, x, c), return_mode="median"), 4)
        except Exception:  # noqa: BLE001
            entry["error"] = traceback.format_exc()[-800:]
        res["fwd"].append(entry)
        if "ms" in entry and (best is None or entry["ms"] < best[1]):
            best = (fwd, entry["ms"])
        rep.save()
    if best is None:
        return
    res["best_fwd"] = {"cfg": best[0], "ms": best[1], "x_floor": round(best[1] / FLOOR_MS[name], 2)}
    xg = mamba_inputs(sig, MAMBA.T, grad=True)
    do = torch.randn(MAMBA.B, MAMBA.T, MAMBA.H, MAMBA.V, device=DEVICE, dtype=torch.bfloat16)
    names = [n for n, t in xg.tensors().items() if t.requires_grad]
    best_b = None
    for bwd in bwd_grid:
        if rep.left() < 45:
            break
        cfg, entry = _cfg(best[0], bwd), {"bwd": bwd}
        entry["fwd_used"] = (cfg["BT"], cfg["BV"], cfg["num_warps"])

        entry.update(_time_fwd_bwd(sig, xg, cfg, do, names))
        res["fwdbwd"].append(entry)
        if "ms" in entry and (best_b is None or entry["ms"] < best_b[1]):
            best_b = (cfg, entry["ms"])
        rep.save()
    if best_b is not None:
        res["best_fwdbwd"] = {"cfg": best_b[0], "ms": best_b[1]}
        grad_check(rep, name, best_b[0])


def grad_check(rep: Report, name: str, cfg: dict) -> None:
    """Best config's gradients vs the PyTorch loop's autograd (fp32 loop on the same bf16 inputs), T=512."""
    sig, res = SIGS[name], rep.data["mamba"][name]
    try:
        x = mamba_inputs(sig, 512, grad=True)
        names = [n for n, t in x.tensors().items() if t.requires_grad]
        o, _ = scan.run(sig, x, cfg)
        w = torch.randn(o.shape, device=DEVICE)
        got = torch.autograd.grad((o.float() * w).sum(), [getattr(x, n) for n in names])
        ref_o = torch_loop(sig, x)
        ref = torch.autograd.grad((ref_o * w).sum(), [getattr(x, n) for n in names])
        errs = {f"d{n}": float(f"{rel_err(a.float(), b.float()):.3e}") for n, a, b in zip(names, got, ref)}
        errs["o"] = float(f"{rel_err(o.float(), ref_o):.3e}")
        res["grad_check_T512"] = errs
    except Exception:  # noqa: BLE001
        res["grad_check_T512"] = {"error": traceback.format_exc()[-800:]}
    rep.save()


def mamba_split(rep: Report, name: str) -> None:
    """The split forward beside the default (walk) one at the Mamba-1 shape, same tiles."""
    sig = SIGS[name]
    res = rep.data["split"].setdefault(name, {"floor_ms": FLOOR_MS[name], "fwd": [], "fwdbwd": []})
    walk = scan.default_config(sig, MAMBA)
    res["walk_cfg"] = walk
    x = mamba_inputs(sig, MAMBA.T, grad=False)
    x.output_final_state = True
    with torch.no_grad():
        ref_o, ref_ht = scan.run(sig, x, walk)
        ms = do_bench(lambda: scan.run(sig, x, walk), return_mode="median")
    res["fwd"].append({"fwd_mode": "walk", "ms": round(ms, 4), "x_floor": round(ms / FLOOR_MS[name], 2)})
    rep.save()
    best = None
    for L in SPLIT_LS:
        if rep.left() < 60:
            break
        cfg, entry = {**walk, "fwd_mode": "split", "split_L": L}, {"fwd_mode": "split", "split_L": L}
        try:
            with torch.no_grad():
                o, ht = scan.run(sig, x, cfg)
                entry["err_vs_walk"] = {
                    "o": float(f"{rel_err(o.float(), ref_o.float()):.3e}"),
                    "ht": float(f"{rel_err(ht, ref_ht):.3e}"),
                }
                if max(entry["err_vs_walk"].values()) <= TOLERANCES[torch.bfloat16][0]:
                    ms = do_bench(lambda c=cfg: scan.run(sig, x, c), return_mode="median")
                    entry["ms"], entry["x_floor"] = round(ms, 4), round(ms / FLOOR_MS[name], 2)
        except Exception:  # noqa: BLE001
            entry["error"] = traceback.format_exc()[-800:]
        res["fwd"].append(entry)
        if "ms" in entry and (best is None or entry["ms"] < best[1]):
            best = (cfg, entry["ms"])
        rep.save()
    xg = mamba_inputs(sig, MAMBA.T, grad=True)
    do = torch.randn(MAMBA.B, MAMBA.T, MAMBA.H, MAMBA.V, device=DEVICE, dtype=torch.bfloat16)
    names = [n for n, t in xg.tensors().items() if t.requires_grad]
    for cfg in [walk] + ([best[0]] if best else []):
        if rep.left() < 45:
            break
        entry = {"fwd_mode": cfg["fwd_mode"], "split_L": cfg["split_L"]}

        entry.update(_time_fwd_bwd(sig, xg, cfg, do, names))
        res["fwdbwd"].append(entry)
        rep.save()


def loop_baseline(rep: Report, name: str) -> None:
    sig = SIGS[name]
    x = mamba_inputs(sig, 512, grad=True)
    names = [n for n, t in x.tensors().items() if t.requires_grad]
    with torch.no_grad():
        fwd = do_bench(lambda: torch_loop(sig, x), warmup=1, rep=1, return_mode="median")

    def step():
        torch_loop(sig, x).sum().backward()
        for n in names:
            getattr(x, n).grad = None

    both = do_bench(step, warmup=1, rep=1, return_mode="median")
    rep.data["mamba"][name]["torch_loop"] = {
        "T512_fwd_ms": round(fwd, 2),
        "T512_fwdbwd_ms": round(both, 2),
        "extrapolated_T4096_fwd_ms": round(fwd * 8, 1),
        "extrapolated_T4096_fwdbwd_ms": round(both * 8, 1),
    }
    rep.save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=330.0)
    parser.add_argument(
        "--split",
        action="store_true",
        help="also check and time the split forward (fwd_mode='split') for split_L in "
        f"{SPLIT_LS} beside the default walk forward, before the tile sweeps",
    )
    args = parser.parse_args()
    rep = Report(args.out / "scan_gpu.json", args.budget, correctness=[], mamba={}, split={})
    mamba_rows = ["channel", "channel_static"]
    check_small(rep, mamba_rows, mamba_rows, mamba_rows)
    if args.split:
        check_small(rep, mamba_rows, mamba_rows, mamba_rows, {"fwd_mode": "split", "split_L": 32})
        for name in mamba_rows:
            if rep.left() > 60:
                mamba_split(rep, name)
    # (BT, BV, num_warps) with BK = N = 16; tiles are [BT, BK, BV] with lanes on V
    fwd_grid = [(8, 16, 1), (8, 8, 1), (4, 8, 1), (16, 8, 1), (4, 16, 1), (16, 16, 1), (8, 32, 1), (4, 32, 2)]
    bwd_grid = [(8, 8, 1), (4, 8, 1), (8, 4, 1), (16, 4, 1), (4, 16, 1), (16, 8, 2)]
    mamba(rep, "channel", fwd_grid, bwd_grid)
    mamba(rep, "channel_static", fwd_grid[:4], bwd_grid[:3])
    for name in mamba_rows:
        if rep.left() > 20 and name in rep.data["mamba"]:
            try:
                loop_baseline(rep, name)
            except Exception:  # noqa: BLE001
                rep.data["mamba"][name]["torch_loop"] = {"error": traceback.format_exc()[-500:]}
    check_small(rep, [n for n in SIGS if n not in mamba_rows], ["key_before"], ["key_before"])
    rep.save()
    print(json.dumps({"split": rep.data["split"], "mamba": rep.data["mamba"]}, indent=1)[-5000:])
    bad = [c for c in rep.data["correctness"] if not c.get("ok")]
    print(f"correctness: {len(rep.data['correctness']) - len(bad)} ok, {len(bad)} failed")
    for c in bad:
        print(json.dumps(c)[:1500])


if __name__ == "__main__":
    main()
