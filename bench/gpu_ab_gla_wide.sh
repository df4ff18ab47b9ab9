#!/usr/bin/env bash
# gla / rwkv6 forward: the state walk storing the gate sums (fwd_cumsum="state") and the forward
# without gradients at states every 64 steps (infer_wide; infer_chunk=64 in runs 1-3), against FLA in one process
# (bench/gpu_ab_gla_fwd.py). Run through bench/device_run.sh: $STEP_OUT is the step's folder.
# Run 1 (bench/results/gpu_ab_gla_wide_run1.json): chunk_fwd_o_wide read each half apart, both
# modes were variants of the then default (fwd_cumsum="kernel", infer_chunk=0); run 2: the one-tile
# read-out, its stages and K-slice tied to the other kernels'; run 3 (below): both modes the KEY
# default, the read-out's own wide_BK / wide_stages, "before" = the default until run 2.
exec python3 bench/gpu_ab_gla_fwd.py --out "$STEP_OUT/ab.json" \
    --variant 'before={"fwd_cumsum": "kernel", "infer_wide": false}' \
    --variant 'wide_bk128={"wide_BK": 128}' \
    --variant 'wide_bk32={"wide_BK": 32}' \
    --variant 'wide_ns1={"wide_stages": 1}'
