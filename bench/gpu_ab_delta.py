"""A/B of the chunked delta-rule kernels on the GPU, in one process: our deltanet and
gated_deltanet at the default config and at named overrides, beside FLA's ``chunk_delta_rule``
and ``chunk_gated_delta_rule`` on the same inputs (bench/_anchors.py's mapping: same layout).

    python3 bench/gpu_ab_delta.py --shape 4,4096,16,128,128 --out F.json \
        [--variants default,qk,...] [--bwd default,qk] [--budget-s 200]

Per (op, variant): the relative L2 error of ``o`` against FLA's, forward and forward+backward
do_bench medians, the gradients' errors (against FLA's for deltanet; gated: against our default,
FLA's backward is refused on Triton 3.6), and per-kernel ms from the torch profiler. A variant
is the default config with overrides (``chunk_delta.default_config`` is patched, so the public op
runs it). The JSON is rewritten after every measurement: a fault keeps what came before it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from scandsl.bench._anchors import ANCHORS, Opts
from scandsl.bench._harness import do_bench_ms
from scandsl.bench._inputs import make_op_inputs, op_spec
from scandsl.bench.gpu_profile import kernel_ms
from scandsl.lowering import chunk_delta

from scandsl._core import Shape
from scandsl.testing import rel_err

# run 1 (2026-11-24 02:00 UTC) timed operand_dtype "qk", prepare_wu "full", bwd_bk 128, bv 64,
# out_bv 128, num_warps 8, num_stages 3, state_warps 4 one at a time (bench/results/gpu_ab_delta_run1.json)
STATE = {"state_warps": 4, "bv": 64, "state_stages": 3}  # bv 64: outside the sm_90 fault (bv <= 32)
COMBO_A = STATE | {"out_bk": 64, "prepare_warps": 2}
VARIANTS: dict[str, dict] = {  # most wanted first: the budget may stop the list
    "default": {},
    "comboA": COMBO_A,
    "comboB": STATE | {"out_bk": 64, "prepare_wu": "split", "prepare_warps": 1},
    "pw2": {"prepare_warps": 2},
    "split1": {"prepare_wu": "split", "prepare_warps": 1},
    "state": STATE,
    "out64": {"out_bk": 64},
    "pw1": {"prepare_warps": 1},
    "split2": {"prepare_wu": "split", "prepare_warps": 2},
    "out64s3": {"out_bk": 64, "num_stages": 3},
    "out128": {"out_bv": 128, "num_warps": 8, "prepare_warps": 4},
    "comboA_b4": COMBO_A | {"bwd_warps": 4},
    "comboA_bk32": COMBO_A | {"bwd_bk": 32},
}
ANCHOR = {"deltanet": "fla.chunk_delta_rule", "gated_deltanet": "fla.chunk_gated_delta_rule"}
_DEFAULT = chunk_delta.default_config


def _grads(o: torch.Tensor, do: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(o, leaves, do))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4,4096,16,128,128")
    ap.add_argument("--ops", default="deltanet,gated_deltanet")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument(
        "--bwd", default="default,state,comboA,comboB", help="variants also timed forward+backward"
    )
    ap.add_argument("--extra", default="{}", help='JSON {"name": {overrides}} added to the variants')
    ap.add_argument(
        "--budget-s", type=float, default=200.0, help="start no new variant after this (split over ops)"
    )
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    shape = Shape(*map(int, a.shape.split(",")))
    variants = {n: VARIANTS[n] for n in a.variants.split(",") if n in VARIANTS} | json.loads(a.extra)
    bwd = set(a.bwd.split(","))
    start = time.time()
    res: dict = {"device": torch.cuda.get_device_name(), "shape": a.shape,
                 "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "ops": {}}  # fmt: skip

    def save() -> None:
        Path(a.out).write_text(json.dumps(res, indent=1))

    ops = a.ops.split(",")
    for op in ops:  # each op gets its share of the budget
        _measure(op, shape, variants, bwd, time.time() + a.budget_s / len(ops), res, save)
    res["finished_s"] = round(time.time() - start, 1)
    save()


def _measure(op: str, shape: Shape, variants: dict, bwd: set, deadline: float, res: dict, save) -> None:
    dev = torch.device("cuda")
    fn, _ = op_spec(op)
    args = make_op_inputs(op, shape, torch.bfloat16, dev, seed=0)
    scale = shape.K**-0.5
    rec = res["ops"][op] = {"inputs": {k: str(v.dtype) for k, v in args.items()}, "variants": {}}
    (anchor,) = [x for x in ANCHORS if x.name == ANCHOR[op] and x.op == op]
    run_fla, fla_leaves = anchor.prepare(
        args, Opts(scale=scale, initial_state=None, output_final_state=False, requires_grad=True)
    )
    o_fla = run_fla()[0]
    do = torch.randn(o_fla.shape, generator=torch.Generator(device=dev).manual_seed(1), device=dev)
    do = do.to(o_fla.dtype)
    fla = rec["fla"] = {
        "fwd_ms": do_bench_ms(run_fla, [])[0],
        "kernels_fwd": kernel_ms(run_fla, name_width=120),
    }
    g_fla = None
    if op == "deltanet":
        g_fla = _grads(o_fla, do, fla_leaves)
        fla["fwd_bwd_ms"] = do_bench_ms(lambda: run_fla()[0].backward(do), fla_leaves)[0]
    save()
    print(op, "fla", fla, flush=True)
    leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in args.items()}
    order = [k for k in ("q", "k", "v", "beta", "g") if k in leaves]
    g_ref = g_fla
    for name, over in variants.items():
        if time.time() > deadline:
            rec["variants"][name] = {"skipped": "budget"}
            continue
        chunk_delta.default_config = lambda sig, shp, _o=over: _DEFAULT(sig, shp) | _o
        r: dict = {"overrides": over}
        rec["variants"][name] = r
        try:

            def ours():
                return fn(**leaves, scale=scale, strategy="chunk")[0]

            r["fwd_err_vs_fla"] = rel_err(ours(), o_fla)
            r["fwd_ms"] = do_bench_ms(ours, [])[0]  # autograd on, as FLA's forward is timed
            r["kernels_fwd"] = kernel_ms(ours, name_width=120)
            with torch.no_grad():
                r["fwd_nograd_ms"] = do_bench_ms(ours, [])[0]
            save()
            if name in bwd:
                o = ours()
                got = _grads(o, do, [leaves[k] for k in order])
                if g_ref is None:
                    g_ref = got  # gated: the first variant's gradients are the yardstick
                r["grad_err"] = {k: rel_err(x, y) for k, x, y in zip(order, got, g_ref)}

                def step(ours=ours):
                    ours().backward(do)

                r["fwd_bwd_ms"] = do_bench_ms(step, [leaves[k] for k in order])[0]
                r["kernels_bwd"] = kernel_ms(step, name_width=120)
        except Exception as err:  # a refused or failing config is a result, not the end
            r["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        finally:
            chunk_delta.default_config = _DEFAULT
        save()
        print(op, name, {k: v for k, v in r.items() if not k.startswith("kernels")}, flush=True)


if __name__ == "__main__":
    main()
