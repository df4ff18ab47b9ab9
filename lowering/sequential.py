"""Sequential (fused-recurrent) strategy: the recurrence walked step by step, state in registers.

How it is parallelised: one Triton program per (sequence, head, V-block of ``BV`` value
rows of ``S``); the program keeps its ``[BV, K]`` slice of ``S`` as an fp32 register tile
(K the fast axis, spread over the threads) and walks the time axis, loading the operands of
the next ``prefetch`` steps while the current one computes. Nothing
crosses programs except per-V-block partial sums of key-indexed gradients, reduced in
PyTorch. Any :class:`CoreSig` lowers this way (it is the one strategy legal for every
taxonomy row) and the same forward kernel with ``T == 1`` is the decoding step.

Algorithm (FLA's ``fused_recurrent`` kernels follow the same plan):

- forward: ``S_t = Λ_t ⊙ S_{t-1} · T_t + U_t``, ``o_t = S_t q_t`` (or ``S_{t-1} q_t``);
- backward: the gradient of a linear recurrence is a linear recurrence in reverse time,
  ``dS_{t-1} = Λ_t ⊙ (dS_t T_t^T) [+ do_t q_t^T]``. One kernel runs it backwards (``dk``,
  ``dv``, delta-rule ``du``, ``dS_0``) and then forwards again, recomputing ``S_t`` for
  ``dq`` and the delta-rule terms ``dk −= β P^T du``, ``dβ = −(P k)·du``
  (``P_t = Λ_t ⊙ S_{t-1}``; ``u_t = v_t − β_t P_t k_t`` is saved by the forward).
- log-gate gradients of factorable decays: reverse cumulative sums of
  ``q ⊙ dq − k ⊙ dk`` (per-key), ``do ⊙ o − v ⊙ dv`` (per-value), or their totals
  (scalar), shifted one step for ``Readout.BEFORE``, plus ``S_T ⊙ dS_T`` for a final-state
  gradient (see ``sequential_launch``); exact with the delta transition too.
- per-channel decays (``A``-weighted, no such identity): states recomputed from
  checkpoints every ``CK`` steps (see ``sequential_codegen_channel``).

K is not split (``BK = next_pow2(K)``): the read-out reduces over all of K in-register.

``python -m scandsl.lowering.sequential --write-golden`` rewrites ``lowering/golden/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import triton
from scandsl.autotune._space import Param, SearchSpace
from scandsl.lowering import sequential_launch as _launch
from scandsl.lowering._config import config_memo

from scandsl._core import CoreInputs, CoreSig, Decay, Shape, Transition

__all__ = ["supports", "run", "search_space", "default_config", "generate_source", "decode_step"]

_NAMES = ("q", "k", "v", "g", "gk", "gv", "A", "beta", "initial_state")
GOLDEN = {
    "seq_fwd_scalar": CoreSig(decay=Decay.SCALAR),
    "seq_fwd_key": CoreSig(decay=Decay.KEY),
    "seq_fwd_scalar_delta": CoreSig(decay=Decay.SCALAR, transition=Transition.DELTA),
    "seq_bwd_key": CoreSig(decay=Decay.KEY),
    "seq_bwd_channel": CoreSig(decay=Decay.CHANNEL),
}


def supports(sig: CoreSig) -> str | None:
    """Every valid CoreSig lowers sequentially."""
    return None


def _registers(sig: CoreSig, BK: int, BV: int, warps: int, *, backward: bool) -> float:
    """Rough fp32 registers per thread: the [BV, BK] tiles spread over the threads, plus the
    per-step value vectors, which every lane holds whole (K runs across the lanes).
    Calibrated on sm_90 ptxas counts (``bench/gpu_check_sequential.py --offline-compile``)."""
    tiles = 1 + (sig.decay is Decay.CHANNEL) + sig.key_static + sig.query_static
    return BK * BV * tiles / (32 * warps) + (6 if backward else 2) * BV


def _fits(sig: CoreSig, BK: int, BV: int, warps: int, *, backward: bool) -> bool:
    return _registers(sig, BK, BV, warps, backward=backward) <= 192 and BK * BV >= 32 * warps


def default_config(sig: CoreSig, shape: Shape) -> dict:
    """Heuristic: small V-blocks, one forward warp per 512 state elements (16 a lane).

    The time loop is latency-bound, so many small independent programs, each with enough
    warps that a step's state update is short. Measured on the H100 (Triton 3.6, gla at
    B=4 T=4096 H=16 K=V=128 bf16, the exhaustive 84-config forward grid of the 2026-11-23
    autotune study): BV=16 on 4 warps 2.37 ms, on 2 / 8 / 1 warps 2.64 / 3.39 / 4.18 ms; the
    next best tiles (BV=32 on 8 warps, BV=8 on 2) also hold 512 elements a warp. The backward
    keeps one warp per 2048 elements: it was not part of that grid.
    """
    BK = triton.next_power_of_2(shape.K)
    BV = max(1, min(triton.next_power_of_2(shape.V), 2048 // BK, 32))
    warps = max(1, min(8, BK * BV // 512))
    warps_bwd = max(1, min(8, BK * BV // 2048))
    BV_bwd = BV
    while BV_bwd > 8 and not _fits(sig, BK, BV_bwd, warps_bwd, backward=True):
        BV_bwd //= 2
    return {
        "BV": BV,
        "num_warps": warps,
        "num_stages": 1,
        "prefetch": 2,
        "BV_bwd": BV_bwd,
        "num_warps_bwd": warps_bwd,
        "CK": 32,
    }


def search_space(sig: CoreSig, shape: Shape) -> SearchSpace:
    BK = triton.next_power_of_2(shape.K)
    vmax = triton.next_power_of_2(shape.V)
    bvs = tuple(b for b in (8, 16, 32, 64, 128) if b <= max(vmax, 8))
    params = [
        Param("BV", bvs),
        Param("num_warps", (1, 2, 4, 8)),
        Param("num_stages", (1, 2)),
        Param("prefetch", (1, 2, 3)),
        Param("BV_bwd", bvs),
        Param("num_warps_bwd", (1, 2, 4, 8)),
    ]
    if sig.decay is Decay.CHANNEL:
        params.append(Param("CK", (16, 32, 64)))

    def valid(cfg) -> str | None:
        for backward, bv, w in (
            (False, cfg["BV"], cfg["num_warps"]),
            (True, cfg["BV_bwd"], cfg["num_warps_bwd"]),
        ):
            if not _fits(sig, BK, bv, w, backward=backward):
                est = _registers(sig, BK, bv, w, backward=backward)
                return f"{'backward' if backward else 'forward'} BV={bv}, {w} warps: ~{est:.0f} fp32 registers/thread"
        return None

    return SearchSpace("sequential", tuple(params), valid)


def generate_source(sig: CoreSig, config: dict | None = None) -> dict[str, str]:
    """Kernel name -> Triton module source (forward, backward). Tiles are launch-time
    constexprs; only ``config["prefetch"]`` (steps loaded ahead) changes the text."""
    prefetch = (config or {}).get("prefetch", 2)
    return _launch.kernel_sources(sig, prefetch)


def _meta(x: CoreInputs) -> dict:
    return {
        "scale": float(x.scale),
        "output_final_state": bool(x.output_final_state),
        "cu_seqlens": x.cu_seqlens,
        "out_dtype": x.out_dtype or x.v.dtype,
    }


def _check(sig: CoreSig, x: CoreInputs) -> None:
    missing = sorted(n for n in sig.uses if getattr(x, n) is None)
    if missing:
        raise ValueError(f"sequential: CoreSig({sig.describe()}) reads {missing}, which are None")
    if x.cu_seqlens is not None and x.B != 1:
        raise ValueError(f"sequential: cu_seqlens needs B == 1, got B = {x.B}")
    if x.K > 256 or x.V > 256:
        raise ValueError(f"sequential: K and V must be <= 256, got K={x.K}, V={x.V}")


class _SequentialFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sig, cfg, meta, *tensors):
        t = {n: (x.contiguous() if x is not None else None) for n, x in zip(_NAMES, tensors)}
        t = {n: x for n, x in t.items() if x is not None}
        o, ht, u = _launch.forward(sig, t, meta, cfg, save_u=any(ctx.needs_input_grad[3:]))
        ctx.sig, ctx.cfg, ctx.meta = sig, cfg, meta
        ctx.names = list(t)
        ctx.save_for_backward(*t.values(), ht, u)
        ctx.set_materialize_grads(False)
        if ht is not None:
            return o, ht
        return o

    @staticmethod
    def backward(ctx, do, dht=None):
        *saved, ht, u = ctx.saved_tensors
        t = dict(zip(ctx.names, saved))
        if do is None:
            do = torch.zeros_like(t["v"], dtype=ctx.meta["out_dtype"])
        grads = _launch.backward(
            ctx.sig,
            t,
            ctx.meta,
            ctx.cfg,
            do.contiguous(),
            dht.contiguous() if dht is not None else None,
            ht,
            u,
        )
        out = []
        for i, name in enumerate(_NAMES):
            gr = grads.get(name) if ctx.needs_input_grad[3 + i] else None
            out.append(gr.to(t[name].dtype) if gr is not None else None)
        return (None, None, None, *out)


@config_memo
def _resolve(sig: CoreSig, shape: Shape, config: dict | None) -> dict:
    return {**default_config(sig, shape), **(config or {})}


def run(sig: CoreSig, x: CoreInputs, config: dict | None = None):
    """(o, final_state or None); differentiable for every tensor in ``x``."""
    _check(sig, x)
    cfg = _resolve(sig, Shape(x.B, x.T, x.H, x.K, x.V), config=config)
    res = _SequentialFn.apply(sig, cfg, _meta(x), *(getattr(x, n) for n in _NAMES))
    if x.output_final_state:
        return res[0], res[1]
    return res, None


def decode_step(
    sig: CoreSig, x: CoreInputs, state: torch.Tensor, *, inplace: bool = False, config: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token (``T == 1``): ``(o [B,1,H,V], new_state [B,H,K,V] fp32)``, one kernel launch.

    ``x.initial_state`` / ``x.output_final_state`` are ignored: ``state`` is the state.
    With ``inplace=True`` the new state is written into ``state`` itself (each program
    reads its tile before it writes it, and no two programs share a tile) and returned.
    Not differentiable: it is the inference path.
    """
    if x.T != 1:
        raise ValueError(f"decode_step: one token per call, got T = {x.T}")
    if state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError("decode_step: state must be a contiguous float32 [B, H, K, V] tensor")
    _check(sig, x)
    cfg = {**default_config(sig, Shape(x.B, 1, x.H, x.K, x.V)), **(config or {})}
    t = {n: getattr(x, n).detach().contiguous() for n in _NAMES[:-1] if getattr(x, n) is not None}
    t["initial_state"] = state
    meta = {**_meta(x), "output_final_state": True, "cu_seqlens": None}
    with torch.no_grad():
        o, ht, _ = _launch.forward(
            sig, t, meta, cfg, save_u=False, ht=state if inplace else None, decode=True
        )
    return o, ht


def _write_golden(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, sig in GOLDEN.items():
        (folder / f"{name}.py").write_text(generate_source(sig)[name])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m scandsl.lowering.sequential")
    ap.add_argument("--write-golden", action="store_true", help="rewrite lowering/golden/seq_*.py")
    args = ap.parse_args(argv)
    if args.write_golden:
        _write_golden(Path(__file__).parent / "golden")


if __name__ == "__main__":
    main()
