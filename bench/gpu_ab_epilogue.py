"""GPU A/B of the fused epilogue backward (lowering/epilogue_bwd.py): each op's fwd+bwd with it and
with PyTorch's autograd over the output expression (``epilogue_bwd.apply`` patched to ``None``), on
the same tree and inputs, as CUDA-graph device time; the kernels of the fused call; the epilogue
kernels' device times for BR = 16, 32, 64. Writes $STEP_OUT/epilogue_ab.json.

    bash bench/device_run.sh '250 ab python3 bench/gpu_ab_epilogue.py'
"""

import json
import os

import torch
from scandsl.bench._harness import graph_ms
from scandsl.bench._inputs import make_op_inputs, op_spec
from scandsl.bench.gpu_profile import kernel_ms
from scandsl.lowering import epilogue, epilogue_bwd

from scandsl._core import Shape
from scandsl.testing import rel_err

STD, SCAN = Shape(4, 4096, 16, 128, 128), Shape(4, 4096, 16, 16, 128)
CASES = [
    ("rwkv6", "chunk", STD),
    ("mamba", "scan", SCAN),
    ("s4", "scan", SCAN),
    ("gated_rfa", "chunk", STD),
    ("mlstm", "chunk", STD),
]
real_apply = epilogue_bwd.apply
res = {"cases": {}, "br": {}}
out = os.path.join(os.environ.get("STEP_OUT", "."), "epilogue_ab.json")


def setup(name, strategy, shape):
    fn, _ = op_spec(name)
    x = {
        k: (v.requires_grad_() if v.is_floating_point() else v)
        for k, v in make_op_inputs(name, shape, torch.bfloat16, "cuda", seed=0).items()
    }
    leaves = [v for v in x.values() if v.requires_grad]
    do = torch.randn(fn(**x, strategy=strategy)[0].shape, device="cuda", dtype=torch.bfloat16)

    def call():
        fn(**x, strategy=strategy)[0].backward(do)

    def grads():
        for t in leaves:
            t.grad = None
        call()
        return [t.grad.clone() for t in leaves]

    return call, leaves, grads


for name, strategy, shape in CASES:
    call, leaves, grads = setup(name, strategy, shape)
    r = {}
    g_fused = grads()
    r["fused_ms"], r["fused_noise"] = graph_ms(call, leaves)
    r["fused_kernels"] = kernel_ms(call, name_width=60)
    epilogue_bwd.apply = lambda *a, **k: None
    g_torch = grads()
    r["torch_ms"], r["torch_noise"] = graph_ms(call, leaves)
    epilogue_bwd.apply = real_apply
    r["grad_rel_err_fused_vs_torch"] = max(rel_err(a.float(), b.float()) for a, b in zip(g_fused, g_torch))
    res["cases"][f"{name}.{strategy}"] = r
    print(name, strategy, r, flush=True)
    json.dump(res, open(out, "w"), indent=1)

for name, strategy, shape in CASES[:2]:
    call, leaves, _ = setup(name, strategy, shape)
    for br in (16, 32, 64):
        epilogue.BR = br
        ks = kernel_ms(call, reps=5)
        res["br"][f"{name}.BR{br}"] = {k: v for k, v in ks.items() if "epilogue" in k} | {
            "all": sum(ks.values())
        }
        print(name, br, res["br"][f"{name}.BR{br}"], flush=True)
    epilogue.BR = 32
    json.dump(res, open(out, "w"), indent=1)
