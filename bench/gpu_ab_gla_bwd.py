"""A/B of the KEY-decay backward (gla, rwkv6) on the GPU: per-kernel fwd+bwd profiles of ours and
flash-linear-attention's ``chunk_gla`` / ``chunk_rwkv6``, and chunk_vector configs, in one process.

    python3 bench/gpu_ab_gla_bwd.py --out $STEP_OUT/ab.json [--ops gla,rwkv6] [--variants a,b]

For each op, on the same bf16 inputs (``make_op_inputs``, seed 0):

1. FLA's fwd+bwd: per-kernel device ms (``kernel_ms``: torch profiler, 3 calls) and the CUDA-graph
   time of the call (``graph_ms``, as the suite times it);
2. every variant of ours (the default config with keys replaced, ``VARIANTS``): output and every
   gradient against the default's (relative L2; over 1e-2 is not timed), then the same two
   measurements.

Results are rewritten after every item, so a timeout keeps what finished. ``--smoke`` runs the
checks on the CPU under the interpreter (fp16, tiny shape, no FLA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
from scandsl.bench._anchors import ANCHORS, Opts  # noqa: E402
from scandsl.bench._inputs import make_op_inputs, op_spec  # noqa: E402
from scandsl.bench.gpu_ab_gla_fwd import first, use  # noqa: E402  (the default-config patch)
from scandsl.bench.gpu_profile import kernel_ms  # noqa: E402

from scandsl._core import Shape  # noqa: E402
from scandsl.testing import rel_err  # noqa: E402

DEVICE, HALF = ("cpu", torch.float16) if SMOKE else ("cuda", torch.bfloat16)

VARIANTS = {
    "default": {},
    # run 4 (2026-11-24 09:10 UTC): the gate sums from chunk_local_cumsum, as before fwd_cumsum="state"
    "kernel_cumsum": {"fwd_cumsum": "kernel"},
    # run 2: chunk_bwd_dqk_intra walking the sub-chunk's own pairs (dqk_diag="cols"), and the
    # inter kernel's V-tile (run 1: dqk_BV 16 -> 32 took chunk_bwd_dqk_inter 0.897 -> 0.685 ms)
    "bv32": {"dqk_BV": 32},
    "bv64": {"dqk_BV": 64},
    "cols": {"dqk_diag": "cols"},
    "cols_bv32": {"dqk_diag": "cols", "dqk_BV": 32},
    "cols_bk128_bv32": {"dqk_diag": "cols", "dqk_BK": 128, "dqk_BV": 32},
    "cols_bk32_bv32": {"dqk_diag": "cols", "dqk_BK": 32, "dqk_BV": 32},
    "cols_w8_bv32": {"dqk_diag": "cols", "dqk_warps": 8, "dqk_BV": 32},
    "cols_bk128_bv64": {"dqk_diag": "cols", "dqk_BK": 128, "dqk_BV": 64},
    # run 3: chunk_bwd_da_key (da_scores="full", the KEY default when run) against chunk_bwd_da
    "da_blocks": {"da_scores": "blocks"},
    "da_bv32": {"da_BV": 32},
    "da_bv64": {"da_BV": 64},
    "da_w8_bv64": {"da_BV": 64, "da_warps": 8},
    # run 1
    "shared": {"dqk_mode": "shared_scores"},
    "dqk_bk128": {"dqk_BK": 128},
    "dqk_bk32": {"dqk_BK": 32},
    "dqk_w8": {"dqk_warps": 8},
    "dqk_bv32": {"dqk_BV": 32},
    "dv_bv128": {"dv_BV": 128},
    "state_64x128_w8": {"state_BK": 64, "state_warps": 8},
    "chunk64": {"chunk": 64},
}
ANCHOR = {"gla": "fla.chunk_gla", "rwkv6": "fla.chunk_rwkv6"}

def ab(op: str, shape: Shape, names: list[str], res: dict, save, fla_too: bool) -> None:
    fn, _ = op_spec(op)
    args = make_op_inputs(op, shape, HALF, DEVICE, seed=0)
    leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in args.items()}
    grads_of = [k for k, v in leaves.items() if v.requires_grad]
    r = res.setdefault(op, {"check": {}, "fwd_bwd_ms": {}, "kernels": {}})
    do = torch.randn(first(fn(**args, strategy="chunk")).shape, generator=torch.Generator().manual_seed(5))
    do = do.to(DEVICE, HALF)
    if not SMOKE and fla_too:
        from scandsl.bench._harness import graph_ms

        (anchor,) = [a for a in ANCHORS if a.name == ANCHOR[op] and a.op == op]
        opts = Opts(scale=shape.K**-0.5, initial_state=None, output_final_state=False, requires_grad=True)
        fla, fla_leaves = anchor.prepare(args, opts)

        def fla_step():
            first(fla()).backward(do)

        t0 = time.time()
        fla_step()
        r["fla_first_call_s"] = round(time.time() - t0, 1)
        r["kernels"]["fla"] = kernel_ms(fla_step)
        r["fwd_bwd_ms"]["fla"] = graph_ms(fla_step, fla_leaves)
        save()
    ref = None
    for name in names:
        over = VARIANTS[name]
        use(over)
        try:
            o = first(fn(**leaves, strategy="chunk"))
            g = torch.autograd.grad(o, [leaves[k] for k in grads_of], do)
            if ref is None:
                ref = (o.detach(), g)
            chk = {"o_vs_default": rel_err(o, ref[0])}
            chk.update({f"d{k}_vs_default": rel_err(a, b) for k, a, b in zip(grads_of, g, ref[1])})
            ok = all(v < 1e-2 for v in chk.values())
            del o, g  # a live autograd graph on the leaves breaks the CUDA-graph capture below
            r["check"][name] = {**chk, "ok": ok}
            save()
            if not ok or SMOKE:
                continue

            from scandsl.bench._harness import graph_ms

            fresh = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in args.items()}

            def step(fresh=fresh):
                first(fn(**fresh, strategy="chunk")).backward(do)

            r["kernels"][name] = kernel_ms(step)
            r["fwd_bwd_ms"][name] = graph_ms(step, list(fresh.values()))
        except Exception as err:  # a variant that fails to compile or run is reported, not fatal
            r["check"][name] = {
                "error": f"{type(err).__name__}: {err}",
                "trace": traceback.format_exc()[-2000:],
            }
        save()
        print(op, name, r["fwd_bwd_ms"].get(name), flush=True)
    use({})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shape", default=None, help="B,T,H,K,V (4,4096,16,128,128; smoke 2,67,2,24,40)")
    ap.add_argument("--ops", default="gla,rwkv6")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="names from VARIANTS; default first")
    ap.add_argument("--no-fla", action="store_true", help="skip flash-linear-attention's profile")
    ap.add_argument("--smoke", action="store_true", help="the checks only, on the CPU (fp16, no FLA)")
    a = ap.parse_args()
    shape = Shape(*map(int, (a.shape or ("2,67,2,24,40" if SMOKE else "4,4096,16,128,128")).split(",")))
    names = ["default"] + [n for n in a.variants.split(",") if n != "default"]
    res: dict = {"device": "cpu (interpreter)" if SMOKE else torch.cuda.get_device_name(), "shape": str(shape),
                 "variants": {n: VARIANTS[n] for n in names},
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        a.out.write_text(json.dumps(res, indent=1))

    for op in a.ops.split(","):
        ab(op, shape, names, res, save, fla_too=not a.no_fla)
    save()


if __name__ == "__main__":
    main()
