"""Kernels the GPU compiler refused while every interpreter test passed: compiled here for sm_90.

The interpreter runs programs the compiler rejects (on the 2026-11-23 GPU run, gated_rfa's and
mlstm's chunk kernels: a ``tl.dot`` of bfloat16 q against the float32 ``(1 − e^g) k``). This
records the launches of an op under the interpreter with the benchmark's inputs (bf16 features,
fp32 gates) and compiles each one ahead of time for Hopper with the Triton on this machine
(``bench/aot_op.py``; its ``--all`` covers every row × strategy, 132 kernels, ~12 minutes).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _aot_op():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench import aot_op

    return aot_op


@pytest.mark.skipif(importlib.util.find_spec("triton.backends.nvidia") is None, reason="no NVIDIA backend")
@pytest.mark.parametrize("name", ["gated_rfa", "mlstm"])
def test_mixed_dtype_chunk_kernels_compile_for_sm90(name):
    aot = _aot_op()
    launches = aot.launches_of(aot.run_op(name, "chunk", torch.bfloat16, T=40))
    kernels = {launch["kernel"] for launch in launches}
    # the forward is the fused walk, or at this small shape (few programs) the split forward's two
    # kernels (chunk_scalar.FEW_PROGRAMS); gated_rfa runs narrow, mlstm widened and always fused
    forward = {"chunk_scalar_fwd"} <= kernels or {"chunk_scalar_fwd_h", "chunk_scalar_fwd_o"} <= kernels
    assert forward and "chunk_scalar_bwd" in kernels, kernels
    for row in aot._compile_elsewhere(launches):
        assert row["ok"], f"{row['kernel']}: {row.get('error', '')[:400]}"
        # the widened fp32 kernels (tf32x3 forward, tf32 backward) spill in local builds at the
        # tiles that timed fastest on the H100 (chunk_scalar.default_config): bounded, not zero
        assert row["regs"] is not None and row["spill_stack"] <= 1024, row
