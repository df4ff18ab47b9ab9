"""Chunked (chunkwise, GLA-style) strategy for decay KEY, VALUE and OUTER: GLA, RWKV-6, HGRN-2, GSA, DFW.

How it is parallelised: time is cut into chunks of ``C`` steps, each chunk into sub-chunks of
``SC`` rows. Forward, three launches:

1. ``chunk_local_cumsum`` — per (chunk, head): the chunk-local cumulative log-decays ``bk`` / ``bv``;
2. ``chunk_fwd_state`` — per (K-block, V-block, sequence, head): a sequential walk over the
   chunks that stores the ``[K, V]`` state entering each chunk (one tensor-core product a chunk);
3. ``chunk_fwd_o`` — per (V-block, chunk, head), fully parallel: read of the carried-in state
   plus the causal intra-chunk part, one sub-chunk of queries at a time.

Backward, three more: ``chunk_bwd_state`` (the adjoint walk in reverse time, per K/V-block),
then ``chunk_bwd_dv`` per (V-block, chunk, head) and ``chunk_bwd_dqk`` per (K-block, chunk,
head), which also produce the log-decay gradients as a reverse cumulative sum inside the chunk.
With ``dqk_mode="shared_scores"`` (the default for KEY decay since it was timed faster on the H100)
``chunk_bwd_dqk`` is replaced by ``chunk_bwd_da`` per (chunk, head), which writes the scores that
span all of V (``do . v^T`` and kin) once to fp32 scratch, and ``chunk_bwd_dqk_shared`` per
(K-block, chunk, head), which reads them: :mod:`scandsl.lowering.chunk_vector_shared`. With
``dqk_mode="split"`` (KEY decay only; timed no faster than shared scores) the scores are followed
by an intra-chunk kernel per sub-chunk and an inter-chunk kernel per chunk; ``fwd_mode="split"``
(timed faster than the fused one) likewise cuts ``chunk_fwd_o`` into a score kernel per sub-chunk
and an output kernel per chunk, and the backward's dv reuses the kept scores:
:mod:`scandsl.lowering.chunk_vector_split`; ``fwd_mode="pairs"`` (the default for KEY decay, timed
faster again) builds the same scores one (chunk, head) a program:
:mod:`scandsl.lowering.chunk_vector_pairs`. With ``fwd_cumsum="fused"`` (KEY decay and
``fwd_mode="pairs"`` only; untimed) the forward has no ``chunk_local_cumsum``: its kernels load the
raw key log-gates and take each chunk's cumulative sum in registers (``cum_gates``, rows past the
chunk's end loaded as 0 first), and the backward runs the cumsum kernel for its own kernels; timed
much slower (the scores kernel 0.80 against 0.37 ms), it stays an option. With
``fwd_cumsum="state"`` (the default for KEY decay) only ``chunk_fwd_state`` sums them, as it reads
them anyway, and stores the sums for every kernel after it, forward and backward: no
``chunk_local_cumsum`` launch for the key gates.

Without gradients (``infer_wide``, the KEY default with ``fwd_mode="pairs"``: nothing is saved for a
backward) the walk runs at chunks of ``2C`` and stores half the states; the scores stay at chunks of
``C`` and ``chunk_fwd_o_wide`` (:mod:`scandsl.lowering.chunk_vector_split`) reads each wide chunk
out of its entry state, its halves' scores and the block between the halves. With gradients the
forward stores the state at every chunk, which the backward reads.

Algorithm: Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient Training"
(2024): secondary chunking — between sub-chunks the per-key gates are rebased on a reference row
so tensor-core operands stay bounded, inside a sub-chunk the pair decays are formed in fp32.
Every exponent is ``<= 0``, so nothing overflows for any decay strength or sequence length.
Kernel text: :mod:`scandsl.lowering.chunk_vector_templates`, slots and the gradient algebra:
:mod:`scandsl.lowering.chunk_vector_slots`.

Measured (H100, Triton 3.6, B=4 T=4096 H=16 K=V=128 bf16, ``bench/gpu_check_chunk_vector.py``):
key decay fwd 1.57 ms, fwd+bwd 9.80 ms with the fused dq/dk kernel, 8.62 ms with shared scores
(the default for KEY decay since); key/before 1.59 / 10.63 -> 9.45 ms; on 2026-11-23 the split
forward 1.21 ms (key) and 1.23 ms (key/before); against
flash-linear-attention's chunk_gla 0.85 / 3.70 and chunk_rwkv6 1.07 / 4.31. Not yet at target:
the dq/dk kernel is still ~5.5 ms of the backward (its per-sub-chunk products are fp32
elementwise tiles, not tensor-core products), ``chunk_fwd_o`` ~1.3 ms. On 2026-11-24, with the
tuned KEY tiles and ``fwd_mode="pairs"``, the ops: gla fwd 0.99 ms, fwd+bwd 4.73 (FLA's fwd
0.85); rwkv6 fwd 1.71 (FLA 1.07), ``bench/results/gpu_ab_gla_fwd_run2.json``. Later that day,
per kernel from the torch profiler (``bench/gpu_ab_gla_bwd.py``, ``bench/results/gpu_ab_gla_bwd_run{1,2}.json``):
the split dq/dk kernels were gla's gap to FLA's fwd+bwd (intra 2.02 + inter 0.90 ms against FLA's
intra 0.99 + inter 0.64); walking the sub-chunk's own pairs a column a step (``dqk_diag="cols"``)
and ``dqk_BV=32`` took them to 1.04 + 0.68, the op's fwd+bwd 4.48 -> 3.32 ms (CUDA graph; FLA
3.36 in the same script) and rwkv6's 5.41 -> 4.06 (FLA 3.98); the V-wide scores as blocks of one
``do v^T`` a chunk (``da_scores="full"``) took 0.15 ms more off. In the suite then
(``bench/results/bench-std{1,2}-gla-bwd.json``, before that last da_BV=64): gla 0.941 / 3.195 ms
against FLA 0.843 / 3.353, rwkv6 1.063 / 3.919 against 1.063 / 3.965.
"""

from __future__ import annotations

import torch
from scandsl.autotune._space import Param, SearchSpace
from scandsl.lowering import chunk_vector_launch as launch
from scandsl.lowering._tiles import dot_pad as _pow2
from scandsl.lowering.chunk_vector_slots import generate_source

from scandsl._core import CoreInputs, CoreSig, Decay, Shape, Transition

__all__ = ["supports", "run", "search_space", "default_config", "generate_source"]

# Tests flip this to NaN-fill every buffer the kernels are supposed to overwrite.
POISON_OUTPUTS = False

_TILES = (
    "fwd_BK",
    "fwd_BV",
    "state_BK",
    "state_BV",
    "dv_BK",
    "dv_BV",
    "dqk_BK",
    "dqk_BV",
    "diag_BK",
    "diag_BV",
    "da_BV",
    "pairs_BK",
    "wide_BK",
)
DQK_MODES = ("fused", "shared_scores", "split")
FWD_MODES = ("fused", "split", "pairs")
FWD_DIAGS = ("fold", "cols")  # fwd_mode="pairs": the walk over the pairs inside a sub-chunk
DQK_DIAGS = ("cube", "cols")  # dqk_mode="split": the sub-chunk's own pairs in chunk_bwd_dqk_intra
DA_SCORES = ("blocks", "full")  # the backward's V-wide scores: per sub-chunk, or one [C, C] product (KEY)
# the forward's key log-gate sums: chunk_local_cumsum, every kernel its own, or the state walk's
FWD_CUMSUMS = ("kernel", "fused", "state")


def supports(sig: CoreSig) -> str | None:
    if sig.decay not in (Decay.KEY, Decay.VALUE, Decay.OUTER):
        return f"chunk_vector handles decay KEY, VALUE or OUTER, not {sig.decay.name}"
    if sig.transition is not Transition.IDENTITY:
        return "chunk_vector handles the identity transition only (the delta rule is chunk_delta)"
    if sig.key_static or sig.query_static or sig.decay_static:
        return "chunk_vector needs per-step q, k and gates"
    return None


def default_config(sig: CoreSig, shape: Shape) -> dict:
    """Heuristic tiles, measured on an H100 (Triton 3.6, B=4 T=4096 H=16 K=V=128 bf16, key decay).

    The per-kernel sweep in ``bench/gpu_check_chunk_vector.py`` picked fwd_BK=32, state 64x128
    on 8 warps, dv_BK=32 and dqk 32x32 (key: fwd 1.56 ms, fwd+bwd 9.9 ms, against 1.66 / 10.5
    for the first guess). The elementwise sub-chunk products are ``[SC, SC, tile]`` fp32
    tensors, so the tile they run over stays at 32; the forward and dv kernels take all of V in
    one block when it fits, so the key-gated scores are built once per chunk.
    """
    kp, vp = _pow2(shape.K), _pow2(shape.V)
    value = sig.decay in (Decay.VALUE, Decay.OUTER)
    state_bk, state_bv = min(kp, 64), min(vp, 128)
    cfg = {
        "chunk": 64,
        "sub": 16,
        "fwd_BK": min(kp, 32),
        "fwd_BV": min(vp, 32 if value else 128),
        "fwd_warps": 4,
        "state_BK": state_bk,
        "state_BV": state_bv,
        "state_warps": 8 if state_bk * state_bv >= 64 * 128 else 4,
        "dv_BK": min(kp, 32),
        "dv_BV": min(vp, 32 if value else 128),
        "dv_warps": 4,
        "dqk_BK": min(kp, 32),
        "dqk_BV": min(vp, 32),
        "dqk_warps": 4,
        "diag_BK": min(kp, 32),
        "diag_BV": min(vp, 32),
        # "shared_scores": chunk_bwd_da builds the V-wide [C, C] scores once per (chunk, head) and
        # chunk_bwd_dqk reads them (chunk_vector_shared); timed on the H100 for KEY decay only
        # (gla fwd+bwd 9.80 -> 8.62 ms, rwkv6 10.63 -> 9.45 ms; docs/performance.md). KEY decay
        # now takes "split" with the tuned tiles below; VALUE / OUTER keep "fused" until timed
        "dqk_mode": "fused",
        "da_BV": min(vp, 32),
        # "full" (KEY decay only): chunk_bwd_da_key, one do v^T product a chunk in place of
        # chunk_bwd_da's three per sub-chunk. Timed on the H100 (2026-11-24 05:35 UTC,
        # bench/results/gpu_ab_gla_bwd_run3.json): the score kernel 0.221 -> 0.073 ms with da_BV=64
        # (16: 0.097, 32: 0.079); fwd+bwd gla 3.32 -> 3.16 ms, rwkv6 4.07 -> 3.90
        "da_scores": "full" if sig.decay == Decay.KEY else "blocks",
        "da_warps": 4,
        # "split" (KEY decay): chunk_fwd_a + chunk_fwd_o_split (chunk_vector_split). Timed on the
        # H100 on 2026-11-23 (bench/results/gpu_check_chunk_vector_split.json): gla fwd 1.56 ->
        # 1.21 ms, rwkv6-style 1.59 -> 1.23 ms, and the kept scores take 1.6 ms off the backward's
        # dv. Its dq/dk counterpart (dqk_mode="split") was not faster than shared_scores (5.43 vs
        # 5.24 ms) and stays an option.
        # "pairs" (KEY decay, the default since 2026-11-24): chunk_fwd_a_pairs in place of
        # chunk_fwd_a, one program per (chunk, head), the sub-chunks' own blocks all at once by
        # SC / 2 steps over the folded triangle (chunk_vector_pairs). Timed against "split" and
        # flash-linear-attention in one run on the H100 (bench/gpu_ab_gla_fwd.py,
        # bench/results/gpu_ab_gla_fwd_run2.json, with the KEY tiles below): score kernel 0.69 ->
        # 0.41 ms; gla fwd 1.265 -> 0.986 ms (FLA 0.849), fwd+bwd 5.01 -> 4.73; rwkv6 fwd 2.03 ->
        # 1.71 (FLA 1.07), fwd+bwd 7.35 -> 7.04. "cols" (SC steps) and 8 warps were slower
        "fwd_mode": "pairs" if sig.decay == Decay.KEY else "fused",
        "fwd_diag": "fold",
        # dqk_mode="split": chunk_bwd_dqk_intra's own-sub-chunk pairs a [SC, BK] column / row a step
        # instead of two [SC, SC, BK] fp32 cubes. Timed on the H100 (2026-11-24 05:17 UTC,
        # bench/gpu_ab_gla_bwd.py, bench/results/gpu_ab_gla_bwd_run2*.json): the kernel 2.02 -> 1.04 ms
        # (gla), 2.39 -> 1.17 (rwkv6); with dqk_BV=32 below, fwd+bwd gla 4.48 -> 3.32, rwkv6 5.41 -> 4.06
        "dqk_diag": "cols",
        "fwd_a_stages": 3,  # chunk_fwd_a_pairs' pipeline depth (1: 0.45 ms against 0.43 at 8 warps)
        # its K-slice for the diagonal blocks: 32 timed faster than all of K on the H100 (2026-11-24
        # 02:57 UTC, bench/gpu_ab_config.py, bench/results/gpu_ab_pairs_bk_{gla,rwkv6}.json): gla
        # fwd 0.988 -> 0.943 ms (64: 0.939), rwkv6 1.086 -> 1.064 (64: 1.076)
        "pairs_BK": min(kp, 32),
        # "fused" (KEY decay, fwd_mode="pairs"; untimed): no chunk_local_cumsum in the forward; its
        # three kernels load the raw log-gates and sum each chunk's in registers (cum_gates), the
        # scores kernel gathering the rows it needs from that tile; the backward runs the cumsum
        # kernel itself. Predicted: the pass's write and one read fewer, ~0.05-0.09 ms of gla's 0.94
        "fwd_cumsum": "kernel",
        # infer_wide, without gradients (KEY decay, fwd_mode="pairs"): states every 2 x chunk steps,
        # scores at chunk (chunk_fwd_o_wide, K in wide_BK slices, wide_stages deep); False runs the
        # training forward (and so does any other decay or fwd_mode). Nothing is saved for a backward
        # there, so the states the backward reads at every chunk need not be written
        "infer_wide": False,
        "wide_BK": min(kp, 64),
        "wide_stages": 2,
        "num_stages": 2,
        "fp32_dot": "ieee",
    }
    if sig.decay == Decay.KEY:
        # KEY decay, from the TPE search over this space with the fwd+bwd objective on the H100
        # (2026-11-24 00:15 UTC, gla at the standard shape, 118 trials, each timed config checked
        # with gradients; bench/results/tune_gla_fwd_bwd.json): 6.83 -> 4.95 ms. Chunks of 32,
        # wider K-tiles for the forward scores and dq/dk, narrower V-tiles for the backward's
        # products, dq/dk split. dqk_BV 16 -> 32 since (same run as dqk_diag above):
        # chunk_bwd_dqk_inter 0.90 -> 0.68 ms for gla (64: 0.71; BK 32 / 128 or 8 warps slower)
        cfg.update(chunk=32, fwd_BK=min(kp, 64), state_BK=min(kp, 32), state_warps=4, dv_BV=min(vp, 64),
                   dqk_BK=min(kp, 64), dqk_BV=min(vp, 32), diag_BV=min(vp, 16), dqk_mode="split",
                   da_BV=min(vp, 64), num_stages=3)  # fmt: skip
        # the state walk stores the gate sums (fwd_cumsum="state") and, without gradients, walks chunks
        # of 64 (infer_wide). Timed on the H100 against FLA in one process (2026-11-24, bench/gpu_ab_gla_fwd.py
        # through bench/gpu_ab_gla_wide.sh, bench/results/gpu_ab_gla_wide_run*.json): gla fwd 0.928 ->
        # 0.882 ms with gradients (the walk 0.240 -> 0.293, the 0.091 cumsum pass gone), fwd+bwd 3.24 ->
        # 3.18; without gradients the walk at 64 0.239 and chunk_fwd_o_wide 0.207 at 2 stages (0.265 at 3)
        cfg.update(fwd_cumsum="state", infer_wide=True)
    return cfg


def _check_config(sig: CoreSig, cfg: dict, shape: Shape) -> str | None:
    kp, vp = _pow2(shape.K), _pow2(shape.V)
    c, sc = cfg["chunk"], cfg["sub"]
    if sc < 16 or sc > c or c % sc:
        return f"sub={sc} must be >= 16 (tensor-core rows) and divide chunk={c}"
    for name in _TILES:
        limit = kp if name.endswith("BK") else vp
        if cfg[name] > limit or cfg[name] < 16:
            return f"{name}={cfg[name]} must lie in [16, padded feature size {limit}]"
    if cfg["dqk_mode"] not in DQK_MODES:
        return f"dqk_mode={cfg['dqk_mode']!r} must be one of {DQK_MODES}"
    if cfg["dqk_mode"] == "split" and sig.decay is not Decay.KEY:
        return f"dqk_mode='split' is built for KEY decay only, not {sig.decay.name}"
    if cfg["fwd_mode"] not in FWD_MODES:
        return f"fwd_mode={cfg['fwd_mode']!r} must be one of {FWD_MODES}"
    if cfg["fwd_mode"] in ("split", "pairs") and sig.decay is not Decay.KEY:
        return f"fwd_mode={cfg['fwd_mode']!r} is built for KEY decay only, not {sig.decay.name}"
    if cfg["fwd_diag"] not in FWD_DIAGS:
        return f"fwd_diag={cfg['fwd_diag']!r} must be one of {FWD_DIAGS}"
    if cfg["dqk_diag"] not in DQK_DIAGS:
        return f"dqk_diag={cfg['dqk_diag']!r} must be one of {DQK_DIAGS}"
    if cfg["fwd_cumsum"] not in FWD_CUMSUMS:
        return f"fwd_cumsum={cfg['fwd_cumsum']!r} must be one of {FWD_CUMSUMS}"
    if cfg["fwd_cumsum"] == "state" and sig.decay not in (Decay.KEY, Decay.OUTER):
        return f"fwd_cumsum='state' sums key log-gates; {sig.decay.name} decay has none: use 'kernel'"
    if cfg["fwd_cumsum"] == "fused" and (sig.decay is not Decay.KEY or cfg["fwd_mode"] != "pairs"):
        return (f"fwd_cumsum='fused' is built for KEY decay with fwd_mode='pairs', not {sig.decay.name} "
                f"with fwd_mode={cfg['fwd_mode']!r}; use fwd_cumsum='kernel'")  # fmt: skip
    if cfg["infer_wide"] not in (False, True):
        return f"infer_wide={cfg['infer_wide']!r} must be True or False"
    if cfg["da_scores"] not in DA_SCORES:
        return f"da_scores={cfg['da_scores']!r} must be one of {DA_SCORES}"
    if cfg["da_scores"] == "full" and sig.decay is not Decay.KEY:
        return f"da_scores='full' is built for KEY decay only (no value decay), not {sig.decay.name}"
    value = sig.decay in (Decay.VALUE, Decay.OUTER)
    key = sig.decay in (Decay.KEY, Decay.OUTER)
    # fp32 elements a thread holds for the [SC, SC, tile] sub-chunk products: past 128 they spill badly
    cubes = {
        "fwd diag": (cfg["diag_BK"] if key else 0, cfg["fwd_warps"]),
        "fwd apply": (cfg["fwd_BV"] if value else 0, cfg["fwd_warps"]),
        "dv diag": (cfg["diag_BK"] if key else 0, cfg["dv_warps"]),
        "dv apply": (cfg["dv_BV"] if value else 0, cfg["dv_warps"]),
        "dqk diag": (cfg["diag_BV"] if value else 0, cfg["dqk_warps"]),
        "dqk apply": (cfg["dqk_BK"] if key else 0, cfg["dqk_warps"]),
    }
    if cfg["dqk_mode"] != "fused":
        cubes["da diag"] = (cfg["diag_BV"] if value else 0, cfg["da_warps"])
    if cfg["dqk_mode"] == "split" and cfg["dqk_diag"] == "cols":
        del cubes["dqk apply"]  # chunk_bwd_dqk_intra walks [SC, BK] tiles instead
    for where, (tile, warps) in cubes.items():
        if sc * sc * tile / (32 * warps) > 128:
            return f"{where}: [{sc}, {sc}, {tile}] fp32 product needs > 128 registers a thread"
    if (
        cfg["fwd_mode"] == "pairs" and c * cfg["pairs_BK"] / (32 * cfg["fwd_warps"]) > 64
    ):  # [C, BK] fp32 tiles
        return f"fwd_mode='pairs': [{c}, {cfg['pairs_BK']}] fp32 tiles need > 64 registers a thread each"
    # 16-bit dot operands staged in shared memory per pipeline stage ([C, BK], [BK, BV], [C, BV]);
    # calibrated on sm_90 compiles, where the default tiles take 12-38 KiB
    for kernel, (bk, bv) in {"fwd": ("fwd_BK", "fwd_BV"), "state": ("state_BK", "state_BV"),
                             "dv": ("dv_BK", "dv_BV"), "dqk": ("dqk_BK", "dqk_BV"),
                             "da": ("dqk_BK", "da_BV"), "wide": ("wide_BK", "fwd_BV")}.items():  # fmt: skip
        rows = 2 * c if cfg["infer_wide"] and kernel in ("state", "wide") else c  # chunks without gradients
        stages = cfg["wide_stages"] if kernel == "wide" else cfg["num_stages"]
        nbytes = 2 * max(1, stages) * (rows * cfg[bk] + cfg[bk] * cfg[bv] + rows * cfg[bv])
        if nbytes > 200 * 1024:
            return f"{kernel}: staged tiles need ~{nbytes // 1024} KiB of shared memory (> 200)"
    return None


def search_space(sig: CoreSig, shape: Shape) -> SearchSpace:
    blocks = (16, 32, 64, 128, 256)
    return SearchSpace(
        strategy="chunk",
        params=(
            Param("chunk", (64, 32, 128)),
            Param("sub", (16, 32)),
            Param("fwd_BK", blocks),
            Param("fwd_BV", blocks),
            Param("fwd_warps", (4, 8)),
            Param("state_BK", blocks),
            Param("state_BV", blocks),
            Param("state_warps", (4, 8)),
            Param("dv_BK", blocks),
            Param("dv_BV", blocks),
            Param("dv_warps", (4, 8)),
            Param("dqk_BK", blocks),
            Param("dqk_BV", blocks),
            Param("dqk_warps", (4, 8)),
            Param("diag_BK", (16, 32, 64)),
            Param("diag_BV", (16, 32, 64)),
            Param("dqk_mode", DQK_MODES),
            Param("da_BV", blocks),
            Param("da_warps", (4, 8)),
            Param("fwd_mode", FWD_MODES),
            Param("fwd_diag", FWD_DIAGS),
            Param("dqk_diag", DQK_DIAGS),
            Param("da_scores", DA_SCORES),
            Param("fwd_a_stages", (3, 2, 1)),
            Param("pairs_BK", blocks),
            Param("fwd_cumsum", FWD_CUMSUMS),
            Param("infer_wide", (True, False)),
            Param("wide_BK", blocks),
            Param("wide_stages", (2, 1, 3)),
            Param("num_stages", (2, 1, 3)),
            Param("fp32_dot", ("ieee",)),
        ),
        valid=lambda cfg: _check_config(sig, cfg, shape),
    )


class _ChunkVector(torch.autograd.Function):
    @staticmethod
    def forward(ctx, P: launch.Plan, q, k, v, gk, gv, h0, output_final_state: bool, out_dtype):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        launch.POISON["on"] = POISON_OUTPUTS
        gk_cum, gk_out = _key_sums(P, gk)
        gv_cum = launch.cumsum(P, gv.contiguous()) if P.value else None
        h0c = h0.float().contiguous() if h0 is not None else None
        hs, ht = launch.fwd_state(P, k, v, gk_cum, gv_cum, h0c, output_final_state, gk_out)
        gk_cum = gk_out if gk_out is not None else gk_cum  # the walk's sums, for every kernel after it
        ox = a = None  # o without its zero-step pairs (value decay); the split forward's scores
        if P.cfg["fwd_mode"] in ("split", "pairs"):
            o, a = launch.fwd_o_split(P, q, k, v, gk_cum, hs, out_dtype)
        else:
            o, ox = launch.fwd_o(P, q, k, v, gk_cum, gv_cum, hs, out_dtype)
        ctx.plan = P
        ctx.save_for_backward(q, k, v, gk_cum, gv_cum, hs, ox, a)  # with fused: the raw gk
        ctx.dtypes = tuple(t.dtype if t is not None else None for t in (gk, gv, h0))
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        P = ctx.plan
        q, k, v, gk_cum, gv_cum, hs, ox, a = ctx.saved_tensors
        gk_dtype, gv_dtype, h0_dtype = ctx.dtypes
        launch.POISON["on"] = POISON_OUTPUTS
        if launch.fused_cumsum(P):  # the backward's kernels read the sums: the forward did not store them
            gk_cum = launch.cumsum(P, gk_cum)
        if do is None:
            do = torch.zeros(P.B, P.T, P.H, P.V, dtype=v.dtype, device=v.device)
        do = do.contiguous()
        dht = dht.float().contiguous() if dht is not None else None
        dhs, dh0 = launch.bwd_state(P, q, do, gk_cum, gv_cum, hs, dht, want_dh0=h0_dtype is not None)
        if a is not None:  # the forward's scores: dv in two tensor-core products
            dv, dgv = launch.bwd_dv_split(P, q, k, do, gk_cum, dhs, a), None
        else:
            dv, dgv = launch.bwd_dv(P, q, k, v, do, ox, gk_cum, gv_cum, hs, dhs)
        bwd_dqk = {
            "fused": launch.bwd_dqk,
            "shared_scores": launch.bwd_dqk_shared,
            "split": launch.bwd_dqk_split,
        }[P.cfg["dqk_mode"]]
        dq, dk, dgk = bwd_dqk(P, q, k, v, do, gk_cum, gv_cum, hs, dhs)
        dgk = dgk.to(gk_dtype) if dgk is not None else None
        dgv = dgv.to(gv_dtype) if dgv is not None else None
        dh0 = dh0.to(h0_dtype) if dh0 is not None else None
        return None, dq, dk, dv, dgk, dgv, dh0, None, None


def _key_sums(P: launch.Plan, gk) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(what the state walk reads for the key log-gates, the tensor it stores their sums to).

    ``fwd_cumsum="kernel"``: chunk_local_cumsum's sums, nothing stored; ``"fused"``: the raw gates
    (every forward kernel sums them); ``"state"``: the raw gates, and the walk stores the sums to a
    new fp32 tensor the kernels after it read (one pass over the gates fewer than "kernel")."""
    if not P.key:
        return None, None
    mode = P.cfg["fwd_cumsum"]
    if mode == "kernel":
        return launch.cumsum(P, gk.contiguous()), None
    gk = gk.contiguous()
    return gk, (launch.empty(*gk.shape, dtype=torch.float32, device=gk.device) if mode == "state" else None)


def _wide_applies(sig: CoreSig, cfg: dict) -> bool:
    """Whether ``infer_wide`` changes anything: it is built for KEY decay with fwd_mode="pairs"."""
    return sig.decay is Decay.KEY and cfg["fwd_mode"] == "pairs"


def _validate(sig: CoreSig, x: CoreInputs) -> None:
    reason = supports(sig)
    if reason is not None:
        raise ValueError(reason)
    for name in sorted(sig.uses):
        if getattr(x, name) is None:
            raise ValueError(f"CoreInputs.{name}: decay {sig.decay.name} needs {name}, got None")
    if x.K > 256 or x.V > 256:
        raise ValueError(f"chunk_vector: K and V must be <= 256, got K={x.K}, V={x.V}")
    if x.cu_seqlens is not None and x.B != 1:
        raise ValueError(f"CoreInputs.cu_seqlens: varlen needs B == 1, got B={x.B}")


def resolve_config(sig: CoreSig, x: CoreInputs, config: dict | None) -> dict:
    """Defaults, overridden by ``config``; tiles wider than the padded sizes are clipped."""
    shape = Shape(x.B, x.T, x.H, x.K, x.V)
    cfg = {**default_config(sig, shape), **(config or {})}
    kp, vp = _pow2(x.K), _pow2(x.V)
    for name in _TILES:
        cfg[name] = min(cfg[name], kp if name.endswith("BK") else vp)
    reason = _check_config(sig, cfg, shape)
    if reason is not None:
        raise ValueError(f"chunk_vector config {cfg}: {reason}")
    return cfg


def run(sig: CoreSig, x: CoreInputs, config: dict | None = None):
    """``(o, final_state)`` for one core recurrence; differentiable in q, k, v, gk, gv, initial_state."""
    _validate(sig, x)
    cfg = resolve_config(sig, x, config)
    plan = launch.Plan(sig, x, cfg)
    out_dtype = x.out_dtype or x.v.dtype
    gk = x.gk if plan.key else None
    gv = x.gv if plan.value else None
    leaves = (x.q, x.k, x.v, gk, gv, x.initial_state)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in leaves)
    if cfg["infer_wide"] and _wide_applies(sig, cfg) and not needs_grad:
        wide = launch.Plan(sig, x, {**cfg, "chunk": 2 * cfg["chunk"]})
        return _forward_wide(plan, wide, x, out_dtype)
    return _ChunkVector.apply(plan, x.q, x.k, x.v, gk, gv, x.initial_state, x.output_final_state, out_dtype)


@torch.no_grad()
def _forward_wide(P: launch.Plan, W: launch.Plan, x: CoreInputs, out_dtype: torch.dtype):
    """The forward when nothing needs its gradient (``infer_wide``, KEY decay, ``fwd_mode="pairs"``):
    the state walk at W's chunks, twice P's, so half the states are written and read; the scores
    at P's, whose halves chunk_fwd_o_wide completes with the one block between them."""
    launch.POISON["on"] = POISON_OUTPUTS
    mode = "state" if W.cfg["fwd_cumsum"] == "fused" else W.cfg["fwd_cumsum"]  # the o kernel reads sums
    q, k, v = x.q.contiguous(), x.k.contiguous(), x.v.contiguous()
    gk_cum, gk_out = _key_sums(W.with_config(fwd_cumsum=mode), x.gk)
    h0 = x.initial_state.float().contiguous() if x.initial_state is not None else None
    hs, ht = launch.fwd_state(W, k, v, gk_cum, None, h0, x.output_final_state, gk_out)
    gk_cum = gk_out if gk_out is not None else gk_cum
    return launch.fwd_o_wide(W, P, q, k, v, gk_cum, hs, out_dtype), ht
