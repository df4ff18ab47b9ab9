"""A/B of the chunked scalar-decay backward's tiles on the GPU, in one process: the public ops
(retention, mamba2, linear_attn) forward+backward at the default config and at named overrides.

    python3 bench/gpu_ab_scalar_bwd.py --shape 4,4096,16,128,128 --out F.json [--ops retention,mamba2]

A variant is the default config with overrides (``chunk_scalar.default_config`` is patched, so the
public op runs it); each is checked against the default's output and gradients first, then timed
as a CUDA graph replay (``bench/_harness.py::graph_ms``). Variants stay near the default (chunk 64,
the fused forward): a device fault ends the process, and the JSON, rewritten after every
measurement, keeps what came before it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from scandsl.bench._harness import graph_ms
from scandsl.bench._inputs import make_op_inputs, op_spec
from scandsl.lowering import chunk_scalar

from scandsl._core import Shape
from scandsl.testing import rel_err

VARIANTS: dict[str, dict] = {  # most wanted first: the budget may stop the list
    "default": {},
    "bv64": {"bwd_block_v": 64},
    "bk128": {"bwd_block_k": 128},
    "bk32": {"bwd_block_k": 32},
    "w4": {"bwd_num_warps": 4},
    "s3": {"bwd_num_stages": 3},
    "s1": {"bwd_num_stages": 1},
    "c32": {"bwd_chunk": 32},
    "unfused": {"bwd_fused": False},
    "bv64w4": {"bwd_block_v": 64, "bwd_num_warps": 4},
    "bv16": {"bwd_block_v": 16},
}
_DEFAULT = chunk_scalar.default_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4,4096,16,128,128")
    ap.add_argument("--ops", default="retention,mamba2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--budget-s", type=float, default=150.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    shape = Shape(*(int(s) for s in a.shape.split(",")))
    out, start = Path(a.out), time.perf_counter()
    report: dict = {"device": torch.cuda.get_device_name(), "shape": list(shape), "ops": {}}
    for op in a.ops.split(","):
        fn, _ = op_spec(op)
        args = make_op_inputs(op, shape, torch.bfloat16, torch.device("cuda"), seed=0)
        rows = report["ops"].setdefault(op, {})
        ref, do = None, None
        for name in a.variants.split(","):
            if time.perf_counter() - start > a.budget_s:
                rows[name] = {"skipped": "budget"}
                continue
            over = VARIANTS[name]
            chunk_scalar.default_config = lambda *p, over=over, **kw: {**_DEFAULT(*p, **kw), **over}
            leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in args.items()}
            o, _ = fn(**leaves, strategy="chunk")
            if do is None:  # one output gradient for every variant of the op
                do = torch.randn(o.shape, generator=torch.Generator().manual_seed(5)).to(o)
            o.backward(do)
            grads = {k: t.grad.detach().float().clone() for k, t in leaves.items() if t.grad is not None}
            row: dict = {}
            if ref is None:
                ref = (o.detach().float(), grads)
            else:
                row["o_err"] = rel_err(o.detach().float(), ref[0])
                row["grad_err"] = {k: rel_err(g, ref[1][k]) for k, g in grads.items()}

            def step(fn=fn, leaves=leaves, do=do):
                fn(**leaves, strategy="chunk")[0].backward(do)

            row["fwd_bwd_ms"], row["noise"] = graph_ms(step, list(leaves.values()))
            rows[name] = row
            print(op, name, row, flush=True)
            out.write_text(json.dumps(report, indent=1))
        chunk_scalar.default_config = _DEFAULT
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
