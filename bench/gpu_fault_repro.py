"""Re-run a chunk config that faulted during an H100 autotune run, on the tuner's probe shape
and on the timed shape, each in its own process (a CUDA fault poisons the process).

    python3 bench/gpu_fault_repro.py                 # chunk_scalar's, both shapes, plain
    python3 bench/gpu_fault_repro.py --family delta  # the deltanet config of 2026-11-24, fwd+bwd
    compute-sanitizer python3 bench/gpu_fault_repro.py --one probe   # which kernel, which access
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from scandsl.lowering import load_strategy

from scandsl._core import CoreSig, Decay, Shape, Transition
from scandsl.testing import random_core_inputs

# grid record 75 of the 2026-11-23 study (bench/results/tune_study_mamba2_chunk.json)
CONFIG = {"bwd_chunk": 64, "bwd_block_k": 64, "bwd_block_v": 32, "bwd_num_warps": 8, "bwd_num_stages": 2,
          "bwd_fused": True, "chunk": 64, "block_v": 16, "num_warps": 8, "num_stages": 1, "fp32_dot": "ieee",
          "fwd_mode": "fused", "split_state": "fp32"}  # fmt: skip
# `scandsl tune deltanet --objective fwd_bwd` on 2026-11-24 00:46 UTC stopped on an illegal memory
# access with this config (bench/results/tune_deltanet_fwd_bwd.log)
DELTA = {"chunk": 64, "bv": 32, "out_bv": 32, "bwd_bk": 64, "num_warps": 8, "state_warps": 4, "num_stages": 1,
         "bwd_warps": 8}  # fmt: skip
FAMILIES = {
    "scalar": (CoreSig(decay=Decay.SCALAR), CONFIG),
    "delta": (CoreSig(transition=Transition.DELTA), DELTA),
}
SHAPES = {"probe": Shape(2, 144, 4, 128, 128), "timed": Shape(4, 4096, 16, 128, 128)}


def one(which: str, over: dict, family: str = "scalar") -> None:
    s = SHAPES[which]
    sig, config = FAMILIES[family]
    grad = family == "delta"
    x = random_core_inputs(sig, B=s.B, T=s.T, H=s.H, K=s.K, V=s.V, dtype=torch.bfloat16, device="cuda", seed=1234,
                           requires_grad=grad)  # fmt: skip
    o, _ = load_strategy("chunk").run(sig, x, {**config, **over})
    if grad:
        o.float().sum().backward()
    torch.cuda.synchronize()
    print(which, over, "ok, finite:", bool(torch.isfinite(o).all()), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", choices=list(SHAPES))
    ap.add_argument("--over", default="{}")
    ap.add_argument("--family", choices=list(FAMILIES), default="scalar")
    args = ap.parse_args()
    if args.one:
        one(args.one, json.loads(args.over), args.family)
        return
    variants = {"scalar": ({}, {"num_stages": 2}, {"num_warps": 4}),
                "delta": ({}, {"num_stages": 2}, {"num_warps": 4}, {"bv": 64}, {"out_bv": 64}, {"state_warps": 8},
                          {"bwd_warps": 4})}[args.family]  # fmt: skip
    for which in SHAPES:
        for over in variants:
            r = subprocess.run([sys.executable, __file__, "--one", which, "--over", json.dumps(over), "--family",
                                args.family], capture_output=True, text=True, timeout=120)  # fmt: skip
            tail = (r.stdout + r.stderr).strip().splitlines()[-1:] or ["(no output)"]
            print(which, over, "rc", r.returncode, "|", tail[0][:300], flush=True)


if __name__ == "__main__":
    main()
