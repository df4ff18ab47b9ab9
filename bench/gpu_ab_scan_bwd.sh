# Scan backward tiles at the Mamba-1 shape (the default bwd tiles were never tuned: the complete
# grid of 2026-11-23 varied the forward's). Each variant keeps <= 32 fp32 state values a thread.
python3 bench/gpu_ab_config.py --op mamba --strategy scan --module scan --shape 4,4096,16,16,128 --mode fwd_bwd \
  --variant bt4_bv16='{"bwd_BT": 4, "bwd_BV": 16}' \
  --variant bt8_bv16_w2='{"bwd_BT": 8, "bwd_BV": 16, "bwd_num_warps": 2}' \
  --variant bt16_bv8_w2='{"bwd_BT": 16, "bwd_BV": 8, "bwd_num_warps": 2}' \
  --variant bt4_bv8='{"bwd_BT": 4, "bwd_BV": 8}' \
  --variant bt16_bv4='{"bwd_BT": 16, "bwd_BV": 4}' \
  --variant bt8_bv4='{"bwd_BT": 8, "bwd_BV": 4}' \
  --variant bt16_bv16_w4='{"bwd_BT": 16, "bwd_BV": 16, "bwd_num_warps": 4}' \
  --budget-s 170 --out "$@"
