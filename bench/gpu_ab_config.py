"""A/B of a strategy's configs on the GPU, in one process: a public op, forward or forward+backward,
at its default config and at named overrides, each checked against the default first, then timed
as a CUDA graph replay after an L2 flush (``bench/_harness.py::graph_ms``).

    python3 bench/gpu_ab_config.py --op retention --strategy chunk --module chunk_scalar \\
        --mode fwd_bwd --variant bv64='{"bwd_block_v": 64}' --variant w4='{"bwd_num_warps": 4}' --out F.json

A variant is the module's ``default_config`` with overrides (the function is patched, so the public
op runs it). Keep variants away from known device faults: a fault ends the process, and the JSON,
rewritten after every measurement, keeps what came before it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

import torch
from scandsl.bench._harness import graph_ms
from scandsl.bench._inputs import make_op_inputs, op_spec

from scandsl._core import Shape
from scandsl.testing import rel_err


def _variant(text: str) -> tuple[str, dict]:
    name, _, over = text.partition("=")
    return name, json.loads(over) if over else {}


def _measure(a, fn, args, over: dict, ref, do) -> tuple[dict, tuple, torch.Tensor | None]:
    """One variant (already patched in): checked against ``ref`` (the default's output and
    gradients; this variant's become it when ``ref`` is None), then timed."""
    grad = a.mode == "fwd_bwd"
    leaves = {k: v.detach().clone().requires_grad_(grad and v.is_floating_point()) for k, v in args.items()}
    with torch.set_grad_enabled(grad):
        o, _ = fn(**leaves, strategy=a.strategy)
    grads = {}
    if grad:
        if do is None:  # one output gradient for every variant
            do = torch.randn(o.shape, generator=torch.Generator().manual_seed(5)).to(o)
        o.backward(do)
        grads = {k: t.grad.detach().float().clone() for k, t in leaves.items() if t.grad is not None}
    row: dict = {"config": over}
    if ref is None:
        ref = (o.detach().float(), grads)
    else:
        row["o_err"] = rel_err(o.detach().float(), ref[0])
        row["grad_err"] = {k: rel_err(g, ref[1][k]) for k, g in grads.items()}

    def call():
        if not grad:
            with torch.no_grad():
                return fn(**leaves, strategy=a.strategy)
        fn(**leaves, strategy=a.strategy)[0].backward(do)

    row["ms"], row["noise"] = graph_ms(call, list(leaves.values()) if grad else [])
    return row, ref, do


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", required=True)
    ap.add_argument("--strategy", required=True, help="the op's strategy argument (chunk, scan, ...)")
    ap.add_argument("--module", required=True, help="scandsl.lowering module whose default_config is patched")
    ap.add_argument("--shape", default="4,4096,16,128,128")
    ap.add_argument("--mode", choices=("fwd", "fwd_bwd"), default="fwd_bwd")
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON overrides (repeatable)")
    ap.add_argument("--budget-s", type=float, default=150.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    shape = Shape(*(int(s) for s in a.shape.split(",")))
    module = importlib.import_module(f"scandsl.lowering.{a.module}")
    default = module.default_config
    fn, _ = op_spec(a.op)
    args = make_op_inputs(a.op, shape, torch.bfloat16, torch.device("cuda"), seed=0)
    report: dict = {"device": torch.cuda.get_device_name(), "op": a.op, "strategy": a.strategy,
                    "module": a.module, "mode": a.mode, "shape": list(shape), "variants": {}}  # fmt: skip
    out, start = Path(a.out), time.perf_counter()
    ref, do = None, None
    for name, over in [("default", {})] + [_variant(v) for v in a.variant]:
        if time.perf_counter() - start > a.budget_s:
            report["variants"][name] = {"config": over, "skipped": "budget"}
            continue
        module.default_config = lambda *p, over=over, **kw: {**default(*p, **kw), **over}
        if hasattr(getattr(module, "_resolve", None), "cache_clear"):
            module._resolve.cache_clear()  # the memoised resolution would keep the last variant's
        try:
            row, ref, do = _measure(a, fn, args, over, ref, do)
        except Exception as err:  # a config the strategy refuses, or one that breaks: recorded, next
            row = {"config": over, "error": f"{type(err).__name__}: {err}"[:300]}
        report["variants"][name] = row
        print(name, row, flush=True)
        out.write_text(json.dumps(report, indent=1))
    module.default_config = default
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
