"""Chunked (SSD) strategy for decay NONE and SCALAR: linear attention, retention, Mamba-2, mLSTM, ...

How it is parallelised: fused-chunk. The forward runs one program per (V-block, sequence, head);
each walks its sequence's chunks of ``C`` steps in order with its ``[K, BV]`` slice of the fp32
state in registers, doing per chunk the causal decayed intra-chunk product and the read of the
carried state on tensor cores. The backward runs three independent program roles, all in one
launch by default (``bwd_fused``): per (K-block, sequence, head) a forward sweep for ``dq``; per
(K-block, sequence, head) a reverse sweep for ``dk``, ``dg`` and the initial-state gradient; per
(V-block, sequence, head) a reverse sweep for ``dv``. Rows of the state evolve independently under
a scalar decay, which is what lets each program rebuild only its own slice; ``dg`` needs no ``dq``
because ``q_t . dq_t = o_t . do_t``. The kernels and the algebra are in
:mod:`scandsl.lowering.chunk_scalar_source` (Mamba-2's SSD, Dao & Gu 2024; Yang et al. 2024,
fused-chunk GLA).

q, k, v of mixed dtypes (mLSTM's and gated_rfa's gated values are float32 beside 16-bit
features) run widened to float32, tf32x3 products forward and tf32 backward (``_widen_mixed``).

``fwd_mode="split"`` (config key; default ``"fused"``) replaces the forward by a serial state pass
that stores the state entering each chunk plus a fully parallel output kernel over chunks
(:mod:`scandsl.lowering.chunk_scalar_split`); the backward is the same for both.

Log-decays enter only as ``exp`` of within-chunk differences that are ``<= 0``, so long
sequences (T = 65536 and beyond) cannot overflow.
"""

from __future__ import annotations

import torch
from scandsl.autotune._space import Param, SearchSpace
from scandsl.lowering._tiles import dot_pad as _pow2
from scandsl.lowering.chunk_scalar_launch import Plan, launch_bwd, launch_fwd
from scandsl.lowering.chunk_scalar_source import generate_source
from scandsl.lowering.chunk_scalar_split import launch_fwd_split

from scandsl._core import CoreInputs, CoreSig, Decay, Shape, Transition

__all__ = ["supports", "run", "search_space", "default_config", "generate_source"]

# chunk.run hands q, k, v over as they come: run() widens mixed dtypes (_widen_mixed), where the
# other chunk families narrow them
WIDENS_MIXED_OPERANDS = True


def supports(sig: CoreSig) -> str | None:
    if sig.decay not in (Decay.NONE, Decay.SCALAR):
        return f"chunk_scalar handles decay NONE or SCALAR, not {sig.decay.name}"
    if sig.transition is not Transition.IDENTITY:
        return "chunk_scalar handles the identity transition only (the delta rule is chunk_delta)"
    if sig.key_static or sig.query_static or sig.decay_static:
        return "chunk_scalar needs per-step q and k"
    return None


# Below this many programs the fused forward's serial walk leaves SMs idle and the split forward
# (a serial state pass over small tiles, then the output of every chunk in parallel) is faster.
# mamba2 forward on the H100 (Triton 3.6, 2026-11-24, bench/gpu_ab_mamba2_longT.sh,
# bench/results/gpu_ab_mamba2_longT*.json): B=1 T=65536 H=16 K=V=128 (64 programs) fused 3.05 ms,
# split with 32x32 state tiles and 16-bit chunk states 2.13; B=2 T=32768 (128 programs) fused
# 1.525, split 1.658; B=4 T=4096 (256 programs) fused 0.228, split 0.432.
FEW_PROGRAMS = 128
SPLIT_KEYS = ("split_block_k", "split_block_v", "split_state")


def default_config(
    sig: CoreSig,
    shape: Shape,
    *,
    dtype: torch.dtype | None = None,
    mixed: bool = False,
    n_seq: int | None = None,
) -> dict:
    """Heuristic tiles, chosen from sm_90 builds (``bench/gpu_check_chunk_scalar.py --aot``): no
    register spills, chunks of 64 so that every ``[C, *]`` product runs on wgmma.

    fp32 inputs (``dtype=torch.float32``) take small tiles instead: their exact (``ieee``) products
    run on FMA units, whose operand layouts spill at the 16-bit tile sizes. Operands of mixed
    dtypes widened to fp32 (``mixed``, :func:`_widen_mixed`) take ``MIXED_DOT``'s products on the
    same chunks of 16, with the tiles that timed fastest of those tried on the H100 (mlstm op,
    B=4 T=4096 H=16 K=V=128, Triton 3.6, 2026-11-24, ``bench/results/gpu_diagnose_mixed_tiles.json``):
    forward V-blocks of 64 over 8 warps (3.52 ms; 32 over 8 warps 4.16, over 4 warps 3.61; chunks
    of 32 13.6, of 64 6.44), backward K-blocks of 32 over 8 warps (fwd+bwd 13.64 ms with the
    forward at 4.16; K-blocks of 16 ~16.8; backward chunks of 32 or 64 slower). Local sm_90
    builds (Triton 3.9) of these spill (fwd 304 B, bwd 552 B; every tf32x3 forward tried
    spilled, the tf32 backward with K-blocks of 16 did not): the device's timing decided.
    """
    kp, vp = _pow2(shape.K), _pow2(shape.V)
    if dtype == torch.float32:
        cfg = {
            "chunk": 16, "block_v": min(vp, 32), "num_warps": 4, "num_stages": 1,
            "bwd_chunk": 16, "bwd_block_k": min(kp, 32), "bwd_block_v": min(vp, 32),
            "bwd_num_warps": 4, "bwd_num_stages": 1, "bwd_fused": True, "fp32_dot": "ieee",
            "fwd_mode": "fused",
        }  # fmt: skip
        if mixed:
            fwd, bwd = MIXED_DOT
            cfg.update(fp32_dot=fwd, bwd_fp32_dot=bwd, block_v=min(vp, 64), num_warps=8)
            cfg.update(bwd_block_k=min(kp, 32), bwd_num_warps=8)
        return cfg
    wide = max(kp, vp) > 128
    cfg = {
        "chunk": 64,
        "block_v": min(vp, 32),
        "num_warps": 8 if wide else 4,
        "num_stages": 2,
        "bwd_chunk": 64,
        "bwd_block_k": min(kp, 16 if wide else 64),
        "bwd_block_v": min(vp, 16 if wide else 32),
        # 4 warps: retention fwd+bwd 1.19 ms at 8 warps (block_v 64) and ~1.45 at the old 8-warp
        # default -> 0.79 ms, identical gradients (H100, Triton 3.6, 2026-11-24 02:45 UTC,
        # bench/gpu_ab_config.py, bench/results/gpu_ab_retention_bwd.json); the register rule
        # below had kept the tuner from ever trying it
        "bwd_num_warps": 8 if wide else 4,
        "bwd_num_stages": 2,
        "bwd_fused": True,
        "fp32_dot": "ieee",
        # "split" (chunk_scalar_split: state pass + parallel output kernel): slower where the
        # fused walk has programs enough (FEW_PROGRAMS), faster where it has not
        "fwd_mode": "fused",
    }
    programs = (shape.B if n_seq is None else n_seq) * shape.H * -(-shape.V // cfg["block_v"])
    if programs < FEW_PROGRAMS:
        cfg.update(fwd_mode="split", split_block_k=min(kp, 32), split_block_v=min(vp, 32), split_state="input")
    return cfg


def _check_config(cfg: dict, shape: Shape) -> str | None:
    kp, vp = _pow2(shape.K), _pow2(shape.V)
    c, cb = cfg["chunk"], cfg["bwd_chunk"]
    for name, limit in (("block_v", vp), ("bwd_block_k", kp), ("bwd_block_v", vp)):
        if cfg[name] > limit:
            return f"{name}={cfg[name]} exceeds the padded feature size {limit}"
    threads = {"fwd": 32 * cfg["num_warps"], "bwd": 32 * cfg["bwd_num_warps"]}
    # fp32 registers a thread spends on the carried state and the [C, C] score tile
    tiles = {
        "fwd": (kp * cfg["block_v"] + c * c, threads["fwd"]),
        "bwd_dq_dk": (cfg["bwd_block_k"] * vp + cb * cb, threads["bwd"]),
        "bwd_dv": (kp * cfg["bwd_block_v"] + cb * cb, threads["bwd"]),
    }
    for kernel, (elems, n) in tiles.items():
        # past 80 (forward) sm_90 builds of these kernels spill (measured with --aot); the backward
        # at 96 (64 x 128 state + 64 x 64 scores over 4 warps) timed 1.8x faster than at 48 on the
        # H100 (default_config), so its bound is the device's evidence, not the spill count
        limit = 80 if kernel == "fwd" else 128
        if elems / n > limit:
            return f"{kernel}: state + score tiles need {elems // n} fp32 registers a thread (> {limit})"
    # shared memory (16-bit): pipelined input tiles per stage, plus the state staged as a dot operand
    bk, bv, bvb = cfg["bwd_block_k"], cfg["block_v"], cfg["bwd_block_v"]
    smem = {
        "fwd": cfg["num_stages"] * c * (2 * kp + bv) * 2 + kp * bv * 2,
        "bwd_dq_dk": cfg["bwd_num_stages"] * cb * (2 * bk + 2 * vp) * 2 + bk * vp * 2,
        "bwd_dv": cfg["bwd_num_stages"] * cb * (2 * kp + bvb) * 2 + kp * bvb * 2,
    }
    if cfg.get("fwd_mode", "fused") not in ("fused", "split"):
        return f"fwd_mode={cfg['fwd_mode']!r}: expected 'fused' or 'split'"
    if cfg.get("fwd_mode", "fused") == "fused" and cfg.get("split_state", "fp32") != "fp32":
        return "split_state only matters for fwd_mode='split' (a duplicate of the fp32 config)"
    if cfg.get("fwd_mode") == "split":
        # the state pass holds [BK_h, BV_h]; the output kernel holds no carried state
        bk_h, bv_h = min(cfg.get("split_block_k", kp), kp), min(cfg.get("split_block_v", bv), vp)
        if bk_h * bv_h / (32 * cfg.get("split_num_warps", cfg["num_warps"])) > 80:
            return f"split state pass: [{bk_h}, {bv_h}] state needs > 80 fp32 registers a thread"
        smem["fwd_split_h"] = cfg["num_stages"] * c * (bk_h + bv_h) * 2 + bk_h * bv_h * 2
    for kernel, nbytes in smem.items():
        if nbytes > 200 * 1024:
            return f"{kernel}: pipelined tiles need {nbytes // 1024} KiB of shared memory (> 200)"
    return _known_miscompile(cfg)


def _known_miscompile(cfg: dict) -> str | None:
    """Configs the GPU's compiler builds wrong: excluded with the evidence, not tuned around.

    H100, Triton 3.6.0 (2026-11-23 autotune study, then ``bench/gpu_fault_repro.py`` under
    compute-sanitizer): the fused forward with chunk=64, block_v=16, 8 warps and no software
    pipelining (num_stages=1) reads shared memory out of bounds (``Invalid __shared__ read of
    size 512 bytes`` in the ``[C, C] x [C, BV]`` product), on the probe and the timed shape alike;
    the same tiles with num_stages=2 or 4 warps run correctly. Our kernel cannot address shared
    memory itself, so this is the compiler's layout for that tile; chunk=128 is excluded too
    (untested, same [C, 16] operand shape).

    The second study (same GPU and versions, bench/results/tune_study_mamba2_chunk.json) found
    the whole family around it wrong: the fused forward with chunk=64, num_stages=1 and
    block_v <= 32 returned outputs 0.29-0.49 off the reference (block_v=32 at 4 and 8 warps) or
    inf (block_v=16 at 4 warps), rejected by the correctness gate on every one of 8 tries;
    block_v=64 (8 warps), chunk=128 and chunk=32 with num_stages=1, and the split forward, were
    correct.
    """
    if cfg["bwd_num_stages"] == 1 and cfg["bwd_chunk"] >= 64:
        # H100, Triton 3.6, 2026-11-24: the default 16-bit tiles with bwd_num_stages=1 raised an
        # illegal memory access in the backward (bench/gpu_ab_config.py, only that key changed;
        # bench/results/gpu_ab_retention_bwd.json), as did a tuner trial with chunk=128 and
        # bwd_num_stages=1 (bench/results/tune_retention_fault.json); chunks of 16 (the fp32
        # default) are not affected as far as measured
        return "bwd: bwd_chunk>=64 with bwd_num_stages=1 faults on sm_90 (Triton 3.6: illegal memory access)"
    fused = cfg.get("fwd_mode", "fused") == "fused"
    if not fused or cfg["num_stages"] != 1:
        return None
    if cfg["chunk"] == 64 and cfg["block_v"] <= 32:
        return "fwd: chunk=64, block_v<=32, num_stages=1 computes wrong outputs on sm_90 (Triton 3.6)"
    if cfg["chunk"] >= 64 and cfg["block_v"] == 16 and cfg["num_warps"] == 8:
        return "fwd: chunk>=64, block_v=16, 8 warps, num_stages=1 miscompiles on sm_90 (Triton 3.6: shared-memory read out of bounds)"
    return None


def search_space(sig: CoreSig, shape: Shape) -> SearchSpace:
    blocks = (16, 32, 64, 128, 256)
    return SearchSpace(
        strategy="chunk",
        params=(
            Param("chunk", (64, 32, 128, 16)),
            Param("block_v", blocks),
            Param("num_warps", (4, 8, 2)),
            Param("num_stages", (2, 1, 3)),
            Param("bwd_block_k", blocks),
            Param("bwd_block_v", blocks),
            Param("bwd_num_warps", (4, 8, 2)),
            Param("bwd_num_stages", (2, 1, 3)),
            Param("bwd_chunk", (64, 32, 128, 16)),
            Param("bwd_fused", (True, False)),
            Param("fp32_dot", ("ieee",)),
            Param("fwd_mode", ("fused", "split")),
            # chunk-start states of the split forward: fp32, or q's dtype (what its dot reads anyway)
            Param("split_state", ("fp32", "input")),
        ),
        valid=lambda cfg: _check_config(cfg, shape),
    )


class _ChunkScalar(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan: Plan, q, k, v, g, h0, cu_seqlens, output_final_state: bool, out_dtype):
        ctx.set_materialize_grads(False)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        g = g.contiguous() if g is not None else None
        h0c = h0.float().contiguous() if h0 is not None else None
        launch = launch_fwd_split if plan.cfg.get("fwd_mode", "fused") == "split" else launch_fwd
        o, ht = launch(plan, q, k, v, g, h0c, cu_seqlens, out_dtype, output_final_state)
        ctx.plan = plan
        ctx.in_dtypes = (g.dtype if g is not None else None, h0.dtype if h0 is not None else None)
        # o feeds dg (q.dq = o.do) and the final state <S_T, dS_T>: both only for SCALAR
        scalar = plan.sig.decay is Decay.SCALAR
        ctx.save_for_backward(q, k, v, g, h0c, cu_seqlens, o if scalar else None, ht if scalar else None)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        P: Plan = ctx.plan
        q, k, v, g, h0, cu_seqlens, o, ht = ctx.saved_tensors
        if do is None:
            do = torch.zeros(P.B, P.T, P.H, P.V, dtype=v.dtype, device=v.device)
        do = do.to(v.dtype).contiguous()
        dht = dht.float().contiguous() if dht is not None else None
        dq, dk, dv, dg, dh0 = launch_bwd(P, q, k, v, g, o, h0, ht, cu_seqlens, do, dht)
        g_dtype, h0_dtype = ctx.in_dtypes
        dg = dg.to(g_dtype) if dg is not None else None
        dh0 = dh0.to(h0_dtype) if dh0 is not None else None
        return None, dq, dk, dv, dg, dh0, None, None, None


def _validate(sig: CoreSig, x: CoreInputs) -> None:
    reason = supports(sig)
    if reason is not None:
        raise ValueError(reason)
    if sig.decay is Decay.SCALAR and x.g is None:
        raise ValueError("CoreInputs.g: decay SCALAR needs g [B, T, H], got None")
    if x.K > 256 or x.V > 256:
        raise ValueError(f"chunk_scalar: K and V must be <= 256, got K={x.K}, V={x.V}")
    if x.scale == 0:
        raise ValueError("CoreInputs.scale: the chunked kernels carry dS / scale, so scale must be non-zero")
    if x.cu_seqlens is not None and x.B != 1:
        raise ValueError(f"CoreInputs.cu_seqlens: varlen needs B == 1, got B={x.B}")


# Products of operands of mixed dtypes widened to fp32, (forward, backward): the forward decides
# the branch of a read-out's max / abs, so it runs at fp32 accuracy (tf32x3: three tf32 products);
# the backward's rounding errors pass through smoothly, and tf32 (10-bit mantissa, 8x finer than
# bfloat16's) keeps them inside the band (docs/performance.md, "mlstm's chunk gradients")
MIXED_DOT = ("tf32x3", "tf32")


def _widen_mixed(x: CoreInputs) -> tuple[CoreInputs, bool]:
    """q, k, v in one dtype for the tensor cores: the widest of the three when they differ.

    A spec's derived operand is float32 when its gate is, while q and k stay in the features'
    16-bit dtype: mLSTM's value ``e^i [v, 1]`` (its normaliser ``z`` rides as a value column),
    gated_rfa's ``(1 - e^g) [v, 1]``. Rounding it to bfloat16 rounds what the model computes in
    float32, and mLSTM's read-out ``/ max(1, |z . q|)`` amplifies that rounding: ``z . q`` of signed
    features is a sum with cancellation, and where it sits near 1 the rounding flips the branch
    of ``max`` and with it the gradient (7 of 8192 steps held 99% of dq's error at B=4 T=128 H=16,
    docs/performance.md). So the three run in float32 with ``MIXED_DOT`` products; gradients
    flow back through the cast in each operand's own dtype, the output keeps the dtype it would
    have had.
    """
    dtypes = {t.dtype for t in (x.q, x.k, x.v)}
    if len(dtypes) == 1:
        return x, False
    return x.operands_in(max(dtypes, key=lambda d: d.itemsize)), True


def run(sig: CoreSig, x: CoreInputs, config: dict | None = None):
    """``(o, final_state)`` for one core recurrence; differentiable in q, k, v, g, initial_state.

    q, k and v of mixed dtypes run in the widest of them (:func:`_widen_mixed`)."""
    _validate(sig, x)
    shape = Shape(x.B, x.T, x.H, x.K, x.V)
    x, mixed = _widen_mixed(x)
    n_seq = x.B if x.cu_seqlens is None else len(x.cu_seqlens) - 1
    base = default_config(sig, shape, dtype=x.v.dtype, mixed=mixed, n_seq=n_seq)
    if (config or {}).get("fwd_mode", base["fwd_mode"]) == "fused":  # the split's own keys go with it
        base = {k: v for k, v in base.items() if k not in SPLIT_KEYS}
    cfg = {**base, **(config or {})}
    kp, vp = _pow2(x.K), _pow2(x.V)
    # a block wider than the padded feature size is the same launch as the full width
    cfg.update(block_v=min(cfg["block_v"], vp), bwd_block_k=min(cfg["bwd_block_k"], kp))
    cfg.update(bwd_block_v=min(cfg["bwd_block_v"], vp))
    reason = _check_config(cfg, shape)
    if reason is not None and config is not None:
        raise ValueError(f"chunk_scalar config {config}: {reason}")
    plan = Plan(sig, cfg, x.B, x.T, x.H, x.K, x.V, n_seq, x.cu_seqlens is not None, float(x.scale))
    g = x.g if sig.decay is Decay.SCALAR else None
    out_dtype = x.out_dtype or x.v.dtype
    o, ht = _ChunkScalar.apply(
        plan, x.q, x.k, x.v, g, x.initial_state, x.cu_seqlens, bool(x.output_final_state), out_dtype
    )
    return o, (ht if x.output_final_state else None)
