"""Parallel-scan (Blelloch) strategy: every core signature without the delta rule.

How it is parallelised: one program per (V-block, K-block, sequence, head) owns a
``[BK, BV]`` tile of the fp32 state (S^T, as states are stored); its elements are independent
diagonal recurrences ``S_t[v,k] = Λ_t[v,k] S_{t-1}[v,k] + U_t[v,k]``. The program walks time
in blocks of ``BT`` steps; inside a block the pairs ``(Λ_t, U_t)`` go through
``tl.associative_scan`` (Triton scans the elements each thread holds in order, then combines
across lanes in a log-depth tree; the default tiles keep a block's steps in one thread, where
the scan costs what the sequential recurrence does), and the state leaving the block is
carried to the next in registers, so per-step states never reach global memory. The read-out ``o_t = S_t q_t`` reduces the tile over its K-block; with
several K-blocks the partial outputs are summed on the host. The gate ``exp(gv ⊗ A)`` of a
per-channel decay is computed in the kernel (Mamba's selective scan, Gu & Dao 2023; S4
with a static gate, input and read-out matrix).

Backward: the adjoint ``dS_t = Λ_{t+1} ⊙ dS_{t+1} + C_t`` is the same scan run in reverse
time, one program per tile again, blocks last to first. The forward (when gradients are
needed) saves the state entering each backward block (every ``bwd_BT`` steps, whatever its
own ``BT``); the backward recomputes each block's states from it, so per-step states are never
stored. Log-gate gradients come from ``dL/d log Λ_t = dS_t ⊙ (S_t − U_t)``, reduced onto the
gate's axes; sums over the other tiles (K- or V-blocks, sequences for static operands) are
partial buffers summed on the host.

Split forward (``fwd_mode="split"``, config key; default ``"walk"``, the loop above). The walk
runs one serial program per (tile, sequence, head): 512 one-warp programs at the Mamba-1 shape
below, each over all 4096 steps, too few to cover the GPU's latency. The split forward cuts each
sequence into chunks of ``split_L`` steps (a power of two >= ``BT``, so chunks are whole blocks;
chunks start at each sequence's own start, :mod:`scandsl.lowering._chunks`) and runs three passes:

1. ``scan_chunk_totals_kernel``, one program per (tile, chunk, head): the walk's block loop
   over its chunk from a zero state, storing two fp32 ``[K, V]`` tiles per chunk and head: the
   state leaving the chunk, ``B_c``, and its decay ``log A_c = Σ_t log Λ_t``, summed in log
   space from the loaded log-gates on their own axes (``Σ gv_t ⊗ A`` for the per-channel gate);
2. ``scan_chunk_states_kernel``, one program per (tile, sequence, head): ``S_in[0]`` = the
   initial state (or 0), ``S_in[c+1] = exp(log A_c) ⊙ S_in[c] + B_c``, written over ``B_c``,
   and the final state;
3. ``scan_chunk_out_kernel``, one program per (tile, chunk, head), all in parallel: the walk's
   block loop over the chunk from ``S_in[c]``, storing the outputs and, when gradients are
   needed, the backward's checkpoints.

Passes 1 and 3 are the walk's kernel text with another program map, entry state and exit
(:mod:`scandsl.lowering.scan_source`), so every signature the walk runs, runs split. Pass 3
saves exactly the checkpoints (one state every ``bwd_BT`` steps) the walk saves, so the backward
is the same in both modes and gradients flow through the split forward. Varlen costs one host
sync (the chunk count sets the grid), where the walk needs none. At the Mamba-1 shape with
``split_L=256`` the passes run 8192 programs of 256 steps each instead of 512 of 4096; they also
move more bytes: k, v and gv are read twice (+142 MB over the walk's 218 MB) and the chunk
tiles add 50 MB (1024 tiles of 8 KB a scratch: 17 MB written by pass 1, 25 MB through pass 2,
8 MB read by pass 3), so the split's predicted memory floor is about 1.9x the walk's (410 MB).
Its time is unmeasured: ``bench/gpu_check_scan.py --split`` times it, and it is in the search
space for the autotuner. Ahead-of-time sm_90 builds (no GPU) at the default Mamba tiles: pass 1
needs fewer registers than the walk kernel (247 vs 255, no spill), pass 3 spills at most 16 bytes
more than it (``channel`` without checkpoints: 16 vs 0 bytes of spill stack).

Measured (H100, Mamba-1 shape B=4 T=4096 2048 channels N=16, bf16): the channel forward kernel
0.314 ms at the default tiles (4.7x its 0.067 ms memory floor; each program's span from the
global timer, ``bench/gpu_diagnose.py --only scan_place``, 2026-11-23; mamba_ssm's CUDA scan
0.565 ms in design.md). 2026-11-24, torch profiler (``bench/gpu_ab_scan.py``, results
``bench/results/gpu_ab_scan_run*.json``): the op's forward is this kernel (0.327 / 0.329 ms in
two runs, 0.319 / 0.318 with k and q moved between layouts in bf16, ``scan_slots.late_kq``), the
fused epilogue ``o + D ⊙ x`` (0.066 ms: it re-reads o and x) and two small kernels for
``A = -exp(A_log)`` (0.007 ms); 0.403 -> 0.394 ms graph-timed, 5.4x the 0.072 ms floor
(``bench/results/gpu_bench_scan_run2.json``). Where the kernel's time goes (sm_90 build, one
32-step block of a one-warp program, 128 state elements a thread): ~1430 instructions, of which
128 MUFU.EX2 and ~5 a state element are the recurrence's own (gate argument, exp2, U, FMA,
read-out); the rest moves per-step operands between layouts (shared memory), converts bf16 and
reduces the read-out over the 4 K-lanes (shuffles). 8 one-warp programs an SM (all 1024 fit at
once), and time tracks the instructions issued and the shared-memory traffic, not the MUFU:
sending exp2s to the FMA pipe (a polynomial, 10 instructions for one MUFU op) ran slower at
every share (1/8: 0.363, 1/4: 0.375, all: 0.590 ms), and so did computing the next block's gates
ahead (BT=16: 0.440). The MUFU bound of the 537M exp2s is ~0.145 ms. Forward+backward of the op
3.71 ms (same file).

Skip term in the read-out (``takes_skip``; mamba's and s4's ``D ⊙ x``), measured 2026-11-24
08:51 UTC on an H100 80GB HBM3, Mamba-1 shape, bf16, one process
(``bash bench/device_run.sh '125 ab python3 bench/gpu_ab_scan.py --variant unfused --grad ...'``,
``bench/results/gpu_ab_scan_skip_run1.json``; ``unfused`` is the separate epilogue): mamba's
forward 0.395 -> 0.328 ms graph-timed (4.5x the 0.072 ms floor; the issue's target of 0.219 is
not reached: the scan kernel itself is 0.319), the scan kernel 0.321 -> 0.319 ms (the term costs
nothing measurable), the epilogue's 0.067 ms gone; forward+backward 3.487 -> 3.093 ms (the
epilogue's two kernels, 0.145 ms, and half of the partial sums, 0.399 -> 0.197 ms, gone; the
backward kernel 2.221 -> 2.242 ms with dD and D ⊙ do). ``python3 -m scandsl.bench run --part scan``
in the same call (``bench/results/gpu_bench_scan_skip_run1.json``, outputs and gradients checked
against the reference): mamba 0.328 / 3.091 ms fwd / fwd+bwd, s4 0.211 / 1.698 ms (0.282 / 2.038
in ``gpu_bench_scan_run2.json``, an earlier machine, not an A/B).

Where the forward's time goes, 2026-11-24 13:27 UTC on (docs/performance.md, that session):
ablations of the generated kernel (``bench/gpu_ab_scan_layout.py``) put the read-out at 25 % of
it and the exp2s at nothing measurable (0.317 ms without them against 0.316); Nsight Compute reads
L1 / shared memory 78 % busy and 2 warps a scheduler. Mamba's ``dt`` is now read once (the value
gate is the decay's gate: ``shared_gate``) and a scale of 1 costs no multiply (``SCALED``):
kernel 0.316 -> 0.304 ms at the suite's scale K**-0.5, 0.296 at 1; the backward stores one
gradient for ``dt`` and single partials in the input's dtype: fwd+bwd 3.07 -> 2.77 ms.

Kernel source: :mod:`scandsl.lowering.scan_source` (templates) and
:mod:`scandsl.lowering.scan_slots` (what each signature changes).
"""

from __future__ import annotations

import functools

import torch
from scandsl.autotune._space import Param, SearchSpace
from scandsl.lowering import scan_slots
from scandsl.lowering._chunks import chunk_map
from scandsl.lowering._config import config_memo
from scandsl.lowering._partials import sum_partials
from scandsl.lowering._source import load_source
from scandsl.lowering._tiles import cdiv as _cdiv
from scandsl.lowering._tiles import pow2
from scandsl.lowering.scan_source import generate_source, module_name

from scandsl._core import CoreInputs, CoreSig, Decay, Readout, Shape, Transition

__all__ = [
    "supports",
    "run",
    "search_space",
    "default_config",
    "generate_source",
    "kernels",
    "takes_skip",
    "shares_gate",
]

# Tests flip this to NaN-fill every buffer the kernels are supposed to overwrite.
POISON_OUTPUTS = False

_MAX_FEATURE = 256
# fp32 elements of one [BT, BK, BV] tile a thread may hold: the forward keeps about four such
# tiles live, the backward about ten (more spills to local memory).
_TILE_PER_THREAD = {"": 128, "bwd_": 32}
# the split forward's chunk length when the config does not name one (and the only split_L a
# walk config may carry: any other would duplicate it in the search space)
_SPLIT_L = 256
_FWD_MODES = ("walk", "split")


def supports(sig: CoreSig) -> str | None:
    if sig.transition is Transition.DELTA:
        return (
            "the delta-rule transition I − β k k^T mixes state columns, so the recurrence is not "
            "elementwise and has no associative (Λ, U) scan; use 'chunk' or 'sequential'"
        )
    return None


def value_gates(sig: CoreSig) -> tuple[str, ...]:
    """The value as two factors, ``v ⊙ vg`` with ``vg [B,T,H,V]`` (scandsl._core), is multiplied
    in the kernels."""
    return ("vector",)


def takes_skip(sig: CoreSig) -> bool:
    """Whether the read-out adds a skip term ``D ⊙ v_t`` (``CoreInputs.D``; Mamba's and S4's
    ``D ⊙ x``): with the AFTER read-out, ``o_t`` and ``v_t`` sit on the same row of a block,
    whose value the kernel loads anyway, so the term costs a ``[BV]`` load a program and an FMA
    an output, where the separate epilogue kernel re-reads ``o`` and ``x``."""
    return sig.readout is Readout.AFTER


def shares_gate(sig: CoreSig) -> bool:
    """Whether a value gate that is the decay's per-step gate (``CoreInputs.vg is gv``: mamba's
    ``dt``, which scales the input and the decay's exponent) is read once, as the gate."""
    return scan_slots.shares_gate(sig)


@functools.cache
def kernels(sig: CoreSig, value_gated: bool = False, skip: bool = False, shared_gate: bool = False):
    """The generated module for ``sig``: ``scan_fwd_kernel`` (the walk forward), the split
    forward's ``scan_chunk_totals_kernel``, ``scan_chunk_states_kernel`` and
    ``scan_chunk_out_kernel``, and ``scan_bwd_kernel``. Cached: generating the source costs
    ~0.5 ms of host time a call, more than the kernel at the Mamba-1 shape."""
    variant = {"value_gated": value_gated, "skip": skip, "shared_gate": shared_gate}
    return load_source(
        generate_source(sig, **variant),
        name=module_name(sig, **variant),
    )


def default_config(sig: CoreSig, shape: Shape) -> dict:
    """Heuristic tiles; keys without prefix are the forward's, ``bwd_*`` the backward's.

    Tiles are ``[BT, BK, BV]`` with V fastest: lanes go to V and the rest of K stays in each
    thread, with the time axis. Per-channel states (K = N <= 16) keep all of K in one one-warp
    program: the forward picks 8 V-lanes x 4 K-lanes and 32-step blocks (8 x 4 and 16 steps for a
    static gate), the backward, whose sums run over V as well as over K, 8 x 4. Measured at the
    Mamba-1 shape on an H100 (2026-11-23, ``bench/gpu_diagnose.py --only scan_place``, each
    program's own start and end read from the global timer): BT=32 BV=8 0.314 ms, BT=16 BV=16
    0.398, BT=8 BV=32 0.82; the 1024 one-warp programs of BV=8 hide more latency than 512.
    (Earlier "2x machine dependence" of these timings was host time: the op regenerated the
    kernel source on every call, ~0.5 ms, now cached.) Other decays: untuned guesses. The
    forward walks (``fwd_mode="walk"``): the split forward measured slower, 0.86-1.31 ms for
    split_L = 512..64 vs the walk's 0.307 (same tiles, eager core calls, 2026-11-24,
    ``bench/results/gpu_check_scan_run3.json``): its passes 1 and 3 each compute every gate.
    """
    kp, vp = pow2(shape.K), pow2(shape.V)
    if sig.decay is Decay.CHANNEL and kp <= 16:
        fwd = {
            "BT": 16 if sig.decay_static else 32,
            "BK": kp,
            "BV": min(vp, 8),
            "num_warps": 1,
            "num_stages": 1,
        }
        bwd = {"BT": 8, "BK": kp, "BV": min(vp, 8), "num_warps": 1, "num_stages": 1}
    else:
        bk, bv = min(kp, 32), min(vp, 32)
        fwd = {"BT": 4, "BK": bk, "BV": bv, "num_warps": 4, "num_stages": 1}
        bwd = {"BT": 4, "BK": bk, "BV": min(vp, 16), "num_warps": 2, "num_stages": 1}
    for prefix, cfg in (("", fwd), ("bwd_", bwd)):  # shrink the time block to the register budget
        while cfg["BT"] > 2 and _per_thread(cfg) > _TILE_PER_THREAD[prefix]:
            cfg["BT"] //= 2
    split = {"fwd_mode": "walk", "split_L": _SPLIT_L}
    return {**fwd, **split, **{f"bwd_{key}": value for key, value in bwd.items()}}


def _per_thread(cfg: dict, prefix: str = "") -> float:
    return cfg[f"{prefix}BT"] * cfg[f"{prefix}BK"] * cfg[f"{prefix}BV"] / (32 * cfg[f"{prefix}num_warps"])


def _check_config(cfg: dict, shape: Shape) -> str | None:
    kp, vp = pow2(shape.K), pow2(shape.V)
    for prefix in ("", "bwd_"):
        for name in ("BT", "BK", "BV"):
            value = cfg[prefix + name]
            if value & (value - 1) or value < 2:
                return f"{prefix}{name}={value} must be a power of two >= 2"
        if cfg[prefix + "BK"] > max(kp, 2):
            return f"{prefix}BK={cfg[prefix + 'BK']} exceeds the padded K={kp}"
        if cfg[prefix + "BV"] > max(vp, 2):
            return f"{prefix}BV={cfg[prefix + 'BV']} exceeds the padded V={vp}"
        per_thread = _per_thread(cfg, prefix)
        if per_thread > _TILE_PER_THREAD[prefix]:
            return (
                f"a [{prefix}BT, {prefix}BK, {prefix}BV] tile is {per_thread:.0f} fp32 values "
                f"a thread (> {_TILE_PER_THREAD[prefix]})"
            )
    mode, L = cfg.get("fwd_mode", "walk"), cfg.get("split_L", _SPLIT_L)
    if mode not in _FWD_MODES:
        return f"fwd_mode={mode!r}: expected one of {_FWD_MODES}"
    if mode == "walk" and L != _SPLIT_L:
        return f"split_L only matters for fwd_mode='split' (walk with split_L={L} duplicates {_SPLIT_L})"
    if mode == "split" and (L & (L - 1) or L < cfg["BT"]):
        return f"split_L={L} must be a power of two >= BT={cfg['BT']} (chunks are whole blocks)"
    return None


def search_space(sig: CoreSig, shape: Shape) -> SearchSpace:
    kp, vp = pow2(shape.K), pow2(shape.V)
    params = []
    for prefix in ("", "bwd_"):
        params += [
            Param(f"{prefix}BT", (2, 4, 8, 16, 32, 64)),
            Param(f"{prefix}BK", tuple(b for b in (2, 4, 8, 16, 32, 64, 128, 256) if b <= max(kp, 2))),
            Param(f"{prefix}BV", tuple(b for b in (4, 8, 16, 32, 64, 128) if b <= max(vp, 4))),
            Param(f"{prefix}num_warps", (1, 2, 4, 8)),
            Param(f"{prefix}num_stages", (1, 2)),
        ]
    params += [Param("fwd_mode", _FWD_MODES), Param("split_L", (_SPLIT_L, 64, 128, 512, 1024))]
    return SearchSpace(strategy="scan", params=tuple(params), valid=lambda cfg: _check_config(cfg, shape))


def run(sig: CoreSig, x: CoreInputs, config: dict | None = None):
    reason = supports(sig)
    if reason is not None:
        raise ValueError(f"scan strategy cannot run {sig.describe()}: {reason}")
    if x.K > _MAX_FEATURE or x.V > _MAX_FEATURE:
        raise ValueError(f"scan strategy: K={x.K}, V={x.V}; both must be <= {_MAX_FEATURE}")
    if x.cu_seqlens is not None and x.B != 1:
        raise ValueError(f"scan strategy: cu_seqlens needs batch size 1, got B={x.B}")
    cfg, bad = _resolve(sig, Shape(x.B, x.T, x.H, x.K, x.V), config=config)
    if bad is not None:
        raise ValueError(f"scan strategy: invalid config {cfg}: {bad}")
    if x.D is not None and not takes_skip(sig):
        raise ValueError(f"scan strategy: a skip term D needs readout=after, got {sig.describe()}")
    tensors = (x.q, x.k, x.v, x.g, x.gk, x.gv, x.A, x.initial_state, x.vg, x.D)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    o, ht = _ScanFunction.apply(
        sig, cfg, x.scale, x.cu_seqlens, x.out_dtype or x.v.dtype, x.output_final_state, save, *tensors
    )
    return o, (ht if x.output_final_state else None)


@config_memo
def _resolve(sig: CoreSig, shape: Shape, config: dict | None) -> tuple[dict, str | None]:
    cfg = {**default_config(sig, shape), **(config or {})}
    return cfg, _check_config(cfg, shape)


def _empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = torch.empty(*shape, dtype=dtype, device=device)
    return t.fill_(float("nan")) if POISON_OUTPUTS else t


def _contig(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def _geometry(cfg, prefix, v, q, cu_seqlens):
    """Sizes, block counts and the checkpoint layout (one state per ``bwd_BT`` steps)."""
    B, T, H, V = v.shape
    K = q.shape[-1]
    NK, NV = _cdiv(K, cfg[prefix + "BK"]), _cdiv(V, cfg[prefix + "BV"])
    ct = cfg["bwd_BT"]
    if cu_seqlens is None:
        N, chunk_offsets, n_ckpt = B, None, B * _cdiv(T, ct)
    else:
        N = cu_seqlens.numel() - 1
        blocks = (cu_seqlens[1:] - cu_seqlens[:-1] + ct - 1) // ct
        chunk_offsets = torch.cat([blocks.new_zeros(1), blocks.cumsum(0)]).to(torch.int32)
        n_ckpt = _cdiv(T, ct) + N  # an upper bound on Σ ceil(len / ct): no device sync
    return B, T, H, K, V, N, NK, NV, chunk_offsets, n_ckpt


def _forward_split(mod, sig, cfg, args, scale, meta, B, T, N, NK, NV):
    """The three passes of ``fwd_mode="split"`` (module docstring), writing ``args``' o, ht, hc.

    Passes 1 and 3 put (chunk, head) on the grid's first axis, the only one that takes more
    than 65535 programs (T = 2^20 in chunks of 64 is 16384 chunks a head).
    """
    _, _, v, _, _, _, _, _, _, h0, _, ht, _, cu_seqlens, _ = args
    H, K, V, L, dev = meta["H"], meta["K"], meta["V"], cfg["split_L"], v.device
    chunks = chunk_map(cu_seqlens, B, T, L, dev)  # varlen: one host sync, for the grid
    n_chunks = chunks.chunk_seq.numel()
    hb = _empty(n_chunks, H, K, V, dtype=torch.float32, device=dev)  # B_c, then S_in[c]
    la = None if sig.decay is Decay.NONE else _empty(n_chunks, H, K, V, dtype=torch.float32, device=dev)
    chunk_args = (*args, chunks.chunk_seq, chunks.chunk_loc, hb, la, scale, T, B * T)
    # h0 and ht belong to pass 2; checkpoints to pass 3, which knows the entering states
    inner = dict(meta, L=L, USE_H0=False, STORE_HT=False)
    if n_chunks:
        mod.scan_chunk_totals_kernel[(n_chunks * H, NV, NK)](*chunk_args, **{**inner, "SAVE_CKPT": False})
    mod.scan_chunk_states_kernel[(NV, NK, N * H)](
        h0, ht, hb, la, cu_seqlens, chunks.chunk_off, T,
        H=H, K=K, V=V, BK=meta["BK"], BV=meta["BV"], L=L, USE_H0=meta["USE_H0"],
        STORE_HT=meta["STORE_HT"], IS_VARLEN=meta["IS_VARLEN"], num_warps=meta["num_warps"],
    )  # fmt: skip
    if n_chunks:
        mod.scan_chunk_out_kernel[(n_chunks * H, NV, NK)](*chunk_args, **inner)


def _shared_gate(sig: CoreSig, tensors: tuple) -> bool:
    """The value gate is the decay's gate, the same tensor (``_ScanFunction``'s order)."""
    gv, vg = tensors[5], tensors[8]
    return vg is not None and vg is gv and shares_gate(sig)


class _ScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sig, cfg, scale, cu_seqlens, out_dtype, output_final_state, save, *tensors):
        shared = _shared_gate(sig, tensors)
        q, k, v, g, gk, gv, A, h0, vg, D = (_contig(t) for t in tensors)
        B, T, H, K, V, N, NK, NV, chunk_offsets, n_ckpt = _geometry(cfg, "", v, q, cu_seqlens)
        dev = v.device
        R = B * T
        o = _empty(NK, B, T, H, V, dtype=out_dtype if NK == 1 else torch.float32, device=dev)
        ht = _empty(N, H, K, V, dtype=torch.float32, device=dev) if output_final_state else None
        hc = _empty(n_ckpt, H, K, V, dtype=torch.float32, device=dev) if save else None
        mod = kernels(sig, value_gated=vg is not None, skip=D is not None, shared_gate=shared)
        args = (q, k, v, v if vg is None else vg, g, gk, gv, A, D, h0, o, ht, hc, cu_seqlens, chunk_offsets)
        meta = dict(
            H=H, K=K, V=V, BT=cfg["BT"], BK=cfg["BK"], BV=cfg["BV"], CT=cfg["bwd_BT"],
            USE_H0=h0 is not None, STORE_HT=output_final_state, SAVE_CKPT=save,
            IS_VARLEN=cu_seqlens is not None, SCALED=scale != 1.0,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip
        if cfg.get("fwd_mode", "walk") == "split":
            _forward_split(mod, sig, cfg, args, scale, meta, B, T, N, NK, NV)
        else:
            mod.scan_fwd_kernel[(NV, NK, N * H)](*args, scale, T, R, **meta)
        o = o[0] if NK == 1 else sum_partials(o, out_dtype)
        if save:
            ctx.save_for_backward(q, k, v, g, gk, gv, A, h0, vg, D, hc, cu_seqlens, chunk_offsets)
            ctx.meta = (sig, cfg, scale, shared, [None if t is None else t.dtype for t in tensors])
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, gk, gv, A, h0, vg, D, hc, cu_seqlens, chunk_offsets = ctx.saved_tensors
        sig, cfg, scale, shared, dtypes = ctx.meta
        B, T, H, K, V, N, NK, NV, _, _ = _geometry(cfg, "bwd_", v, q, cu_seqlens)
        dev, R, f32 = v.device, B * T, torch.float32
        need = ctx.needs_input_grad[7:]

        def buf(*shape, final: torch.dtype | None = None):
            """fp32 partials, or, where there is one partial (the first axis), the gradient itself
            in its input's dtype ``final``: the kernel's store rounds as the cast would have, and
            writes half the bytes of a bf16 input's fp32 partial (no cast pass after)."""
            one = final in (torch.bfloat16, torch.float16, f32) and shape[0] == 1
            return _empty(*shape, dtype=final if one else f32, device=dev)

        dq = buf(N, H, V, K) if sig.query_static else buf(NV, B, T, H, K)
        dk = buf(N, H, V, K) if sig.key_static else buf(NV, B, T, H, K)
        dv = buf(NK, B, T, H, V, final=dtypes[2])
        dvg = buf(NK, B, T, H, V, final=dtypes[8]) if vg is not None and not shared else None
        dg = buf(NV * NK, B, T, H) if g is not None else None
        dgk = buf(NV, B, T, H, K) if gk is not None else None
        dgv = None
        if gv is not None:  # shared: the gate's gradient from both its roles, summed in the kernel
            dgv = buf(NK, N, H, V) if sig.decay_static else buf(NK, B, T, H, V, final=dtypes[5])
        dA = buf(N, H, V, K) if A is not None else None
        dh0 = buf(N, H, K, V) if (h0 is not None and need[7]) else None
        dD = buf(N, H, V) if D is not None else None  # per-sequence partials of Σ_t do ⊙ v
        mod = kernels(sig, value_gated=vg is not None, skip=D is not None, shared_gate=shared)
        mod.scan_bwd_kernel[(NV, NK, N * H)](
            q, k, v, vg, g, gk, gv, A, D, hc, do.contiguous(), _contig(dht), dq, dk, dv, dvg, dg, dgk, dgv, dA, dD, dh0,
            cu_seqlens, chunk_offsets, scale, T, R, N,
            H=H, K=K, V=V, BT=cfg["bwd_BT"], BK=cfg["bwd_BK"], BV=cfg["bwd_BV"], CT=cfg["bwd_BT"],
            USE_DHT=dht is not None, STORE_DH0=dh0 is not None, IS_VARLEN=cu_seqlens is not None,
            num_warps=cfg["bwd_num_warps"], num_stages=cfg["bwd_num_stages"],
        )  # fmt: skip
        grads = []
        for i, (part, dtype) in enumerate(zip((dq, dk, dv, dg, dgk, dgv, dA, dh0, dvg, dD), dtypes)):
            if part is None or not need[i]:
                grads.append(None)
                continue
            if i == 5 and sig.decay_static:  # [NK, N, H, V] partials of a static gv [H, V]
                part = part.flatten(0, 1)
            grads.append(part.to(dtype) if i == 7 else sum_partials(part, dtype))  # partials over blocks
        return (None,) * 7 + tuple(grads)
