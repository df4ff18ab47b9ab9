"""Scan forward kernel layouts, side by side, on raw tensors at the Mamba-1 shape (GPU), or a
small shape under the interpreter (CPU, correctness only).

    python3 bench/gpu_ab_scan_layout.py --out F.json [--once] NAME=FILE:KEY=VAL,KEY=VAL ...

Each variant is a ``scan_fwd_kernel`` launched with its constexprs / launch options: FILE is
``gen`` (the kernel the op runs for mamba, ``scandsl show mamba --strategy scan``), ``gen+R`` (that
kernel rewritten by ``R``: an ablation below, or a rewrite of ``bench/gpu_ab_scan.py``), or a
hand-written layout experiment (``bench/scan_layout/v5.py``). The first variant is the reference
every other output is compared with (ablations compute something else: their error is large by
design). Times: the kernel alone as a CUDA graph replay after an L2 flush
(``bench/_harness.py::graph_ms``); ``--once`` launches each variant once, for a profiler:

    ncu --kernel-name scan_fwd_kernel --launch-count N ... python3 bench/gpu_ab_scan_layout.py --once ...

Runs (``bench/results/gpu_ab_scan_layout_*.json``, ``gpu_ncu_scan_*.txt``) are discussed in
``docs/performance.md`` (session of 2026-11-24 13:27 UTC); the ``gen`` variants of those runs
were launched from snapshots of the generated source, identical to what ``gen`` loaded then; run 3
timed rewrites since folded into the generator (``shared_gate``, ``SCALED``).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_ab_scan import _DECAY, REWRITES, _swap  # noqa: E402


def _no_exp(src: str) -> str:
    """Ablation: the gate ``exp2(gv A log2 e)`` replaced by an FMA (the MUFU's share of the time)."""
    return _swap(src, [(_DECAY, "b_a = b_gv[:, None, :] * b_A2[None, :, :] * 0.01 + 1.0")])


_READ = "tl.sum(b_hs * b_q[:, :, None].to(tl.float32), axis=1)"
_LAST = "    if STORE_HT:\n        tl.store(ht + i_nh.to(tl.int64) * K * V + p_s, b_h, mask=m_s)\n"


def _no_read(src: str) -> str:
    """Ablation: no read-out (o = D ⊙ v); the final state is written over o's first rows, which
    keeps the scan alive (nothing else reads it here)."""
    keep = "    tl.store(o + i_nh.to(tl.int64) * K * V + p_s, b_h.to(o.dtype.element_ty), mask=m_s)\n"
    return _swap(src, [(_READ, "tl.zeros_like(b_v)"), (_LAST, _LAST + keep)])


def _even(src: str) -> str:
    """V a multiple of BV and K of BK (the Mamba-1 shape): the tiles' masks on V and K dropped."""
    return _swap(src, [(" & m_v[None, :]", ""), (" & m_k[None, :]", "")])


ABLATIONS = {  # rewrites of the generated kernel: ablations (wrong by design) and experiments
    "even": _even,
    "noexp": _no_exp,
    "noread": _no_read,
}


def generated(rewrites: list[str]):
    """The op's scan module for mamba, each rewrite applied in turn."""
    from scandsl.bench._inputs import op_spec
    from scandsl.lowering import scan
    from scandsl.lowering._source import load_source

    from scandsl._entry import source_options

    spec = op_spec("mamba")[1]
    stage = spec.normal_form.stages[0]
    src = scan.generate_source(stage.sig, **source_options(spec, stage, scan))
    for name in rewrites:
        src = (ABLATIONS.get(name) or REWRITES[name])(src)
    return load_source(src, name="scan_layout_" + "_".join(["gen", *rewrites]))


def load(path: str):
    if path == "gen" or path.startswith("gen+"):
        return generated(path.split("+")[1:])
    spec = importlib.util.spec_from_file_location("scan_layout_" + Path(path).stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def inputs(B, T, H, K, V, dev, seed=0, harness=False):
    """q, k, v, dt, A, D: small dt (~0.02) and A = -(1..16) by default; ``harness``: the bench
    harness's mamba inputs (``make_op_inputs``: dt = softplus(N(0,1) - 2) ~0.13, A in -[1, 16])."""
    if harness:
        from scandsl.bench._inputs import make_op_inputs

        from scandsl._core import Shape

        x = make_op_inputs("mamba", Shape(B, T, H, K, V), torch.bfloat16, dev, seed)
        return [x["q"], x["k"], x["v"], x["dt"], -torch.exp(x["A_log"]), x["D"]]
    g = torch.Generator(device="cpu").manual_seed(seed)
    bf = torch.bfloat16
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    q, k, v = r(B, T, H, K).to(bf), r(B, T, H, K).to(bf), r(B, T, H, V).to(bf)
    dt = torch.nn.functional.softplus(r(B, T, H, V) - 4.0).to(bf)  # Mamba's dt: ~0.001 .. 0.1
    A = -torch.exp(torch.log(torch.arange(1, K + 1).float()).expand(H, V, K) + 0.1 * r(H, V, K)).contiguous()
    D = r(H, V)
    return [t.to(dev) for t in (q, k, v, dt, A, D)]


_NONE = ("g", "gk", "h0", "ht", "hc", "cu_seqlens", "chunk_offsets")  # inputs / outputs these runs leave out
_TYPES = {"q": "*bf16", "k": "*bf16", "v": "*bf16", "vg": "*bf16", "gv": "*bf16", "A": "*fp32", "D": "*fp32",
          "o": "*bf16", "scale": "fp32", "T": "i32", "R": "i32"}  # fmt: skip


def constexprs(meta: dict, B: int, T: int, H: int, K: int, V: int) -> dict:
    """Every constexpr and launch option of one variant's ``scan_fwd_kernel`` at shape (B, T, H, K, V)."""
    return {"H": H, "K": K, "V": V, "BT": meta["BT"], "BK": meta.get("BK", K), "BV": meta["BV"], "CT": 8,
            "USE_H0": False, "STORE_HT": False, "SAVE_CKPT": False, "IS_VARLEN": False, "SCALED": False,
            "num_warps": meta.get("num_warps", 1), "num_stages": meta.get("num_stages", 1),
            **{n: meta[n] for n in ("VI",) if n in meta}}  # fmt: skip


def launch(mod, meta, q, k, v, dt, A, D, o):
    B, T, H, K = q.shape
    c = constexprs(meta, B, T, H, K, v.shape[-1])
    grid = (c["V"] // c["BV"], K // c["BK"], B * H)
    mod.scan_fwd_kernel[grid](
        q, k, v, dt, None, None, dt, A, D, None, o, None, None, None, None, 1.0, T, B * T, **c
    )


def sass(mod, meta, B, T, H, K, V) -> dict:
    """The sm_90 build of one variant, without a GPU: registers, spills, the time loop's opcodes."""
    from _gpu_check import aot_compile

    c = constexprs(meta, B, T, H, K, V)
    c.update(dict.fromkeys(_NONE))
    kernel = mod.scan_fwd_kernel
    c.update({p.name: p.default for p in kernel.params if p.has_default and p.name not in c})
    return aot_compile(kernel, c, _TYPES.__getitem__, int_args=("T", "R"), sass=True)


def run(mod, meta: dict, x: list, ref, row: dict, *, timed: bool):
    """Launch one variant on poisoned output, compare with ``ref`` (the first variant's output,
    returned), time it as a CUDA graph replay when ``timed``."""
    o = torch.full_like(x[2], float("nan"))
    launch(mod, meta, *x, o)
    ref = o.float() if ref is None else ref
    row["rel_err"] = float((o.float() - ref).norm() / ref.norm())
    row["nan"] = bool(o.isnan().any())
    if timed:
        from scandsl.bench._harness import graph_ms

        row["ms"], row["noise"] = graph_ms(functools.partial(launch, mod, meta, *x, o), [])
    return ref


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shape", default="4,4096,16,16,128")
    ap.add_argument(
        "--once", action="store_true", help="launch each variant once, untimed (under a profiler)"
    )
    ap.add_argument(
        "--sass", action="store_true", help="build each variant for sm_90 (no GPU): registers, loop opcodes"
    )
    ap.add_argument("--harness-inputs", action="store_true", help="the bench harness's mamba inputs")
    ap.add_argument("variants", nargs="+")
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    B, T, H, K, V = (int(x) for x in a.shape.split(","))
    x = None if a.sass else inputs(B, T, H, K, V, dev, harness=a.harness_inputs)
    report = {"shape": [B, T, H, K, V], "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "variants": {}}  # fmt: skip
    ref = None
    for item in a.variants:
        name, rest = item.split("=", 1)
        path, _, kv = rest.partition(":")
        meta = {kk: int(vv) for kk, vv in (p.split("=") for p in kv.split(",") if p)}
        row: dict = {"file": path, "meta": meta}
        try:
            mod = load(path)
            if a.sass:
                row.update(sass(mod, meta, B, T, H, K, V))
                row["per_mufu"] = round(row["loop_instructions"] / max(row["loop_mufu"], 1), 2)
            else:
                ref = run(mod, meta, x, ref, row, timed=dev == "cuda" and not a.once)
        except Exception as err:  # one failing layout must not cost the others
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        report["variants"][name] = row
        print(name, row, flush=True)
        Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TRITON_PRINT_AUTOTUNING", "0")
    main()
