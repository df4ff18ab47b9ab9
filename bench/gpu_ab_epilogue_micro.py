"""The output expression alone on the GPU (B=4 T=4096 H=16, bf16 leaves, fp32 per-head
parameters): the fused kernels (forward; forward + generated backward at 4 and 8 warps) against
PyTorch's evaluation and autograd, eager do_bench medians (host time included).
Writes $STEP_OUT/micro.json.

    bash bench/device_run.sh '45 micro python3 bench/gpu_ab_epilogue_micro.py'
"""

import json
import os

import torch
import triton
from scandsl.bench._inputs import op_spec
from scandsl.lowering import epilogue, epilogue_bwd

from scandsl._expr import evaluate

B, T, H = 4, 4096, 16


def measure(name: str, sizes: dict[str, int]) -> dict[str, float]:
    _, spec = op_spec(name)
    leaves = epilogue.plan(spec.output)
    vals = {}
    for lf in leaves:
        shape = ((B, T, H) if lf.per_step else (1, 1, H)) + ((sizes[lf.axis],) if lf.axis else ())
        dt = torch.bfloat16 if lf.per_step else torch.float32
        vals[lf.node] = (torch.rand(shape, device="cuda", dtype=torch.float32) + 0.5).to(dt).requires_grad_()
    scaled = {lf.node: 0.1 for lf in leaves if getattr(lf.node, "name", None) == spec.scaled}
    go = torch.randn(B, T, H, sizes[spec.output.axes[0]], device="cuda", dtype=torch.bfloat16)
    ts = list(vals.values())

    def torch_out():
        env = {n: (t * scaled[n] if n in scaled else t) for n, t in vals.items()}
        return evaluate(spec.output, env, sizes).to(torch.bfloat16)

    def ours():
        o = epilogue_bwd.apply(spec.output, vals, scaled, sizes, torch.bfloat16)
        return torch.autograd.grad(o, ts, go)

    def torch_path():
        return torch.autograd.grad(torch_out(), ts, go)

    def ours_fwd():
        with torch.no_grad():
            return epilogue.run(spec.output, vals, scaled, sizes, torch.bfloat16)

    def torch_fwd():
        with torch.no_grad():
            return torch_out()

    a, b = ours(), torch_path()
    r = {
        "grad_rel_err_vs_torch": max(
            float((x.float() - y.float()).norm() / y.float().norm()) for x, y in zip(a, b)
        )
    }
    for w in (4, 8):
        epilogue_bwd.NUM_WARPS = w
        r[f"fused_fwd_bwd_ms_w{w}"] = triton.testing.do_bench(ours, warmup=25, rep=200)
    epilogue_bwd.NUM_WARPS = 4
    r["torch_fwd_bwd_ms"] = triton.testing.do_bench(torch_path, warmup=25, rep=200)
    r["fused_fwd_ms"] = triton.testing.do_bench(ours_fwd, warmup=25, rep=200)
    r["torch_fwd_ms"] = triton.testing.do_bench(torch_fwd, warmup=25, rep=200)
    return r


res = {}
STD, SCAN = {"K": 128, "V": 128}, {"K": 16, "V": 128}
for name, sizes in [("rwkv6", STD), ("mamba", SCAN), ("gated_rfa", STD), ("mlstm", STD)]:
    res[name] = measure(name, sizes)
    print(name, res[name], flush=True)
json.dump(res, open(os.path.join(os.environ.get("STEP_OUT", "."), "micro.json"), "w"), indent=1)
