#!/usr/bin/env bash
# mamba2 forward at few programs (B=1, T=64K) and at the standard shape: the split forward's
# state-pass tiles against the fused default (bench/gpu_ab_config.py, one process per shape).
set -u
SHAPE=$1 OUT=$2
python3 bench/gpu_ab_config.py --op mamba2 --strategy chunk --module chunk_scalar --shape "$SHAPE" --mode fwd \
  --variant 'split={"fwd_mode":"split"}' \
  --variant 'split_k64v64={"fwd_mode":"split","split_block_k":64,"split_block_v":64}' \
  --variant 'split_k64v32={"fwd_mode":"split","split_block_k":64,"split_block_v":32}' \
  --variant 'split_k32v32={"fwd_mode":"split","split_block_k":32,"split_block_v":32}' \
  --variant 'split_k32v32_in={"fwd_mode":"split","split_block_k":32,"split_block_v":32,"split_state":"input"}' \
  --variant 'split_k64v64_in={"fwd_mode":"split","split_block_k":64,"split_block_v":64,"split_state":"input"}' \
  --variant 'fused_v16={"block_v":16}' \
  --out "$OUT"
