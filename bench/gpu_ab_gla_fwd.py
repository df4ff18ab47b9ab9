"""A/B of the KEY-decay forward (gla, rwkv6) on the GPU: the default config against other forward
modes / tiles (``VARIANTS``) and flash-linear-attention's ``chunk_gla`` / ``chunk_rwkv6``, in one process.

    python3 bench/gpu_ab_gla_fwd.py --out $STEP_OUT/ab.json [--shape 4,4096,16,128,128] [--rounds 3]

For each op, on the same bf16 inputs (``make_op_inputs``, seed 0) with gradients enabled (as in
training):

1. correctness: every variant's output against the reference (``strategy="reference"``), the
   default's and FLA's (relative L2 error), its gradients against the default's (the backward's
   dv reads the forward's scores A), and its output under strong decays (log-decays in [-8, -5])
   against the reference; a variant that is off is not timed;
2. forward time with ``triton.testing.do_bench`` in ``--rounds`` interleaved rounds (FLA, then
   every variant, then again), the median and the minimum over rounds; fwd+bwd for ours;
3. per-kernel forward times from the torch profiler (3 calls), FLA's too.

A variant is the default config with some keys replaced; it reaches the op through
``chunk_vector.default_config`` (the op with ``strategy="chunk"`` takes no config). Results are
rewritten after every item, so a timeout keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

SMOKE = "--smoke" in sys.argv  # the checks only, on the CPU under the interpreter (fp16, no FLA)
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
import triton.testing  # noqa: E402
from scandsl.bench._anchors import ANCHORS, Opts  # noqa: E402
from scandsl.bench._inputs import make_op_inputs, op_spec  # noqa: E402
from scandsl.bench.gpu_profile import kernel_ms  # noqa: E402
from scandsl.lowering import chunk_vector  # noqa: E402

from scandsl._core import Shape  # noqa: E402
from scandsl.testing import rel_err  # noqa: E402

DEVICE, HALF = ("cpu", torch.float16) if SMOKE else ("cuda", torch.bfloat16)

# the default is fwd_mode="pairs" with fwd_diag="fold" since run 2 (bench/results/gpu_ab_gla_fwd_run2.json,
# whose variants were the default of then, "split", against pairs variants); pairs_BK is untimed
VARIANTS = {
    "default": {},
    "split": {"fwd_mode": "split"},
    "pairs_cols": {"fwd_mode": "pairs", "fwd_diag": "cols"},
    "pairs_fold_bk64": {"fwd_mode": "pairs", "fwd_diag": "fold", "pairs_BK": 64},
    "pairs_fold_bk32": {"fwd_mode": "pairs", "fwd_diag": "fold", "pairs_BK": 32},
    # untimed (2026-11-24): no chunk_local_cumsum in the forward, its kernels sum the raw gates
    # (the scores kernel gathers its step rows from the summed tile: one gather a step with "cols")
    "fused_cumsum": {"fwd_cumsum": "fused"},
    "fused_cumsum_cols": {"fwd_cumsum": "fused", "fwd_diag": "cols"},
}
ANCHOR = {"gla": "fla.chunk_gla", "rwkv6": "fla.chunk_rwkv6"}
_DEFAULT_CONFIG = chunk_vector.default_config


def use(over: dict) -> None:
    """Make ``over`` the changes every following chunk_vector call applies to its default config."""
    chunk_vector.default_config = lambda sig, shape: {**_DEFAULT_CONFIG(sig, shape), **over}


def first(o):
    return o[0] if isinstance(o, tuple) else o


def ab(op: str, shape: Shape, rounds: int, res: dict, save) -> None:
    fn, _ = op_spec(op)
    args = make_op_inputs(op, shape, HALF, DEVICE, seed=0)
    leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in args.items()}
    grads_of = [k for k, v in leaves.items() if v.requires_grad]
    (anchor,) = [a for a in ANCHORS if a.name == ANCHOR[op] and a.op == op]
    opts = Opts(scale=shape.K**-0.5, initial_state=None, output_final_state=False, requires_grad=True)
    fla_fwd = None if SMOKE else anchor.prepare(args, opts)[0]
    r = res.setdefault(op, {"check": {}, "fwd_ms": {}, "fwd_bwd_ms": {}, "kernels": {}})

    def ours(over):
        def call():
            use(over)
            return first(fn(**leaves, strategy="chunk"))

        return call

    t0 = time.time()
    o_fla = None if SMOKE else first(fla_fwd()).detach()
    r["fla_first_call_s"] = round(time.time() - t0, 1)
    with torch.no_grad():  # the definition, at the op level
        o_ref = first(fn(**args, strategy="reference")).float()
    do = torch.randn_like(o_ref)
    ok = {}
    ref_o = ref_g = None
    for name, over in VARIANTS.items():
        try:
            o = ours(over)()
            g = torch.autograd.grad(o, [leaves[k] for k in grads_of], do)
            if ref_o is None:
                ref_o, ref_g = o.detach(), g
            chk = {"o_vs_reference": rel_err(o, o_ref), "o_vs_default": rel_err(o, ref_o)}
            chk["o_vs_fla"] = None if o_fla is None else rel_err(o, o_fla)
            with torch.no_grad():  # the forward without gradients (infer_wide's path)
                chk["o_nograd_vs_reference"] = rel_err(ours(over)(), o_ref)
            chk.update({f"d{k}_vs_default": rel_err(a, b) for k, a, b in zip(grads_of, g, ref_g)})
            ok[name] = chk["o_vs_reference"] < 2e-2 and chk["o_nograd_vs_reference"] < 2e-2 and all(
                v < 1e-2 for k, v in chk.items() if k.endswith("default")
            )
            r["check"][name] = {**chk, "ok": ok[name]}
        except Exception as err:  # a variant that fails to compile or run is reported, not fatal
            r["check"][name] = {
                "error": f"{type(err).__name__}: {err}",
                "trace": traceback.format_exc()[-2000:],
            }
            ok[name] = False
        save()
    if o_fla is not None:
        r["check"]["fla"] = {"o_vs_reference": rel_err(o_fla, o_ref)}
    strong = {**args, "gk": -5.0 - 3.0 * torch.rand_like(args["gk"])}  # log-decays in [-8, -5] a step
    with torch.no_grad():
        o_strong = first(fn(**strong, strategy="reference")).float()
        for name, over in VARIANTS.items():
            use(over)
            o = first(fn(**strong, strategy="chunk"))
            r["check"][name]["strong_o_vs_reference"] = rel_err(o, o_strong)
            ok[name] = ok[name] and bool(torch.isfinite(o).all()) and rel_err(o, o_strong) < 2e-2
            r["check"][name]["ok"] = ok[name]
    use({})
    save()
    if SMOKE:
        return
    timed = {"fla": fla_fwd, **{n: ours(VARIANTS[n]) for n in VARIANTS if ok[n]}}

    def no_grad(call):
        def run():
            with torch.no_grad():
                return call()

        return run

    # with gradients enabled (training: what the backward needs is saved), then without (inference,
    # and the benchmark harness's fwd column)
    for key, calls in (("fwd_ms", timed), ("fwd_nograd_ms", {n: no_grad(c) for n, c in timed.items()})):
        samples: dict[str, list[float]] = defaultdict(list)
        for _ in range(rounds):
            for name, call in calls.items():
                samples[name].append(triton.testing.do_bench(call, warmup=25, rep=200))
        r[key] = {name: {"median": round(statistics.median(ms), 4), "min": round(min(ms), 4),
                         "rounds": [round(m, 4) for m in ms]} for name, ms in samples.items()}  # fmt: skip
        save()
    for name in [n for n in VARIANTS if ok[n]]:
        call = ours(VARIANTS[name])

        def fwd_bwd(call=call):
            torch.autograd.grad(call(), [leaves[k] for k in grads_of], do)

        r["fwd_bwd_ms"][name] = round(triton.testing.do_bench(fwd_bwd, warmup=10, rep=200), 4)
        save()
    for name, call in timed.items():
        r["kernels"][name] = kernel_ms(call)
        r.setdefault("kernels_nograd", {})[name] = kernel_ms(no_grad(call))
        save()
    use({})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shape", default="4,4096,16,128,128")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ops", default="gla,rwkv6")
    ap.add_argument("--smoke", action="store_true", help="the checks only, on the CPU (fp16, no FLA)")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=JSON config overrides (repeatable): these and the default instead of VARIANTS")
    a = ap.parse_args()
    if a.variant:
        picked = dict(v.split("=", 1) for v in a.variant)
        VARIANTS.clear()
        VARIANTS.update({"default": {}, **{k: json.loads(v) for k, v in picked.items()}})
    shape = Shape(*map(int, a.shape.split(",")))
    res: dict = {"device": "cpu (interpreter)" if SMOKE else torch.cuda.get_device_name(), "shape": a.shape, "variants": VARIANTS,
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        a.out.write_text(json.dumps(res, indent=1))

    for op in a.ops.split(","):
        ab(op, shape, a.rounds, res, save)
        print(op, json.dumps(res[op]["fwd_ms"]), flush=True)
    save()


if __name__ == "__main__":
    main()
