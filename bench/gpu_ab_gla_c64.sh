#!/usr/bin/env bash
# gla / rwkv6 forward with states every 64 steps (chunk=64) against the default (chunk=32) and FLA,
# one process (bench/gpu_ab_gla_fwd.py). Run through bench/device_run.sh: $STEP_OUT is the step's folder.
exec python3 bench/gpu_ab_gla_fwd.py --out "$STEP_OUT/ab.json" \
    --variant 'c64={"chunk": 64}' \
    --variant 'c64_w8={"chunk": 64, "fwd_warps": 8}' \
    --variant 'c64_st64={"chunk": 64, "state_BK": 64, "state_warps": 8}' \
    --variant 'c64_pbk64={"chunk": 64, "pairs_BK": 64}' \
    --variant 'c64_ns2={"chunk": 64, "num_stages": 2}'
