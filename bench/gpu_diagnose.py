"""Two GPU questions the run of 2026-11-23 (night) left, in one short script.

1. ``mlstm``: the chunk strategy's gradients in bfloat16 failed the harness (dq 6.7e-2 > 2e-2 at
   T=128) while its float16 and CPU checks pass. Per-gradient errors against the float32
   reference on the same inputs, for chunk and sequential, bf16 and fp16 features (gates fp32),
   at the standard shape cut to T=128 — which strategy and dtype carries the error; for chunk,
   per treatment of the mixed operand dtypes (``_operands``). ``mixed_cost`` times those
   treatments on mlstm and gated_rfa at the standard shape.
2. ``scan`` default tiles: the complete grid timed BT=32 BV=8 at 0.40 ms and the default BT=16
   BV=16 at 0.77 ms, where earlier runs timed the default at 0.39–0.44. The two (and BV=4,
   the evening's best) alternated over several rounds in one process: noise or a real gap.
3. ``scan_place``: why the scan forward flips between two speeds. The forward's source is
   instrumented (each program stores its SM, ``%smid``, and the global timer at its start and
   end) and launched after an L2 flush (as ``do_bench`` does), back to back, and from an idle
   GPU; per launch: event time, programs per SM (most, SMs used), the programs' span.

    python3 bench/gpu_diagnose.py --out $OUT
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
from pathlib import Path

import torch
from scandsl.bench._inputs import make_op_inputs
from triton.testing import do_bench

from scandsl import ops
from scandsl._core import CoreSig, Decay, Shape
from scandsl.testing import rel_err


@contextlib.contextmanager
def _operands(mode: str):
    """chunk_scalar's treatment of q, k, v of mixed dtypes: ``"wide"`` (the default since
    2026-11-24: float32, forward products tf32x3, backward tf32), ``"wide_tf32"`` (tf32 in both),
    or ``"narrow"`` (the earlier rule: all three rounded to the features' 16-bit dtype)."""
    from scandsl.lowering import chunk_scalar

    saved = chunk_scalar.WIDENS_MIXED_OPERANDS, chunk_scalar.MIXED_DOT
    chunk_scalar.WIDENS_MIXED_OPERANDS = mode != "narrow"
    chunk_scalar.MIXED_DOT = ("tf32", "tf32") if mode == "wide_tf32" else saved[1]
    try:
        yield
    finally:
        chunk_scalar.WIDENS_MIXED_OPERANDS, chunk_scalar.MIXED_DOT = saved


def mlstm_grads(report: dict) -> None:
    shape = Shape(B=4, T=128, H=16, K=128, V=128)
    for dtype in (torch.bfloat16, torch.float16):
        x = make_op_inputs("mlstm", shape, dtype, "cuda", seed=0)
        ref = {k: v.detach().float().requires_grad_() for k, v in x.items()}
        o_ref, _ = ops.mlstm(**ref, strategy="reference")
        do = torch.randn(o_ref.shape, generator=torch.Generator().manual_seed(11)).cuda()
        o_ref.backward(do)
        for strategy, mode in (
            ("chunk", "wide"),
            ("chunk", "narrow"),
            ("chunk", "wide_tf32"),
            ("sequential", "wide"),
        ):
            got = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
            with _operands(mode):
                o, _ = ops.mlstm(**got, strategy=strategy)
                o.float().backward(do)
            row = {"o": rel_err(o, o_ref)} | {f"d{k}": rel_err(got[k].grad, ref[k].grad) for k in got}
            name = f"mlstm/{strategy}/{str(dtype)[6:]}" + ("" if mode == "wide" else f"/{mode}")
            report[name] = {k: round(v, 6) for k, v in row.items()}
            print(name, report[name], flush=True)


def mixed_cost(report: dict) -> None:
    """fwd and fwd+bwd of the chunk rows with mixed operand dtypes (bf16 features, fp32 gates) at
    the standard shape, per treatment of the operands (``_operands``), alternated over rounds."""
    shape = Shape(B=4, T=4096, H=16, K=128, V=128)
    times: dict[str, list[float]] = {}
    for op in ("mlstm", "gated_rfa"):
        fn = getattr(ops, op)
        x = make_op_inputs(op, shape, torch.bfloat16, "cuda", seed=0)
        xg = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
        do = None
        for _, mode in itertools.product(range(2), ("wide", "narrow", "wide_tf32")):
            with _operands(mode):

                def fwd(fn=fn, x=x):
                    with torch.no_grad():
                        return fn(**x, strategy="chunk")

                o = fn(**xg, strategy="chunk")[0]
                do = torch.randn_like(o) if do is None else do

                def fwd_bwd(fn=fn, xg=xg, do=do):
                    fn(**xg, strategy="chunk")[0].backward(do)

                for mode_name, f in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
                    ms = float(do_bench(f, warmup=10, rep=100, return_mode="median"))
                    times.setdefault(f"{op}/{mode}/{mode_name}", []).append(round(ms, 4))
        print(op, {k: v for k, v in times.items() if k.startswith(op)}, flush=True)
    report["mixed_cost"] = {"shape": list(shape), "rounds_ms": times,
                            "median_ms": {k: statistics.median(v) for k, v in times.items()}}  # fmt: skip


def mixed_tiles(report: dict) -> None:
    """Tiles of the widened mixed-operand path (tf32x3 forward, tf32 backward) on mlstm: per
    override of ``default_config``, the errors at T=128 (as ``mlstm_grads``) and the op's fwd
    (forward overrides) or fwd+bwd (backward overrides) at the standard shape."""
    from scandsl.lowering import chunk_scalar

    fwd = {"F0": {}, "F1_w4": {"num_warps": 4}, "F2_c32": {"chunk": 32}, "F3_bv64": {"block_v": 64},
           "F4_c64": {"chunk": 64, "num_stages": 2}}  # fmt: skip
    bwd = {"B1_c32": {"bwd_chunk": 32}, "B2_bk32": {"bwd_block_k": 32}, "B3_c32_bk32": {"bwd_chunk": 32, "bwd_block_k": 32},
           "B4_c64_bv16": {"bwd_chunk": 64, "bwd_block_v": 16, "bwd_num_stages": 2}}  # fmt: skip
    small = make_op_inputs("mlstm", Shape(B=4, T=128, H=16, K=128, V=128), torch.bfloat16, "cuda", seed=0)
    ref = {k: v.detach().float().requires_grad_() for k, v in small.items()}
    o_ref, _ = ops.mlstm(**ref, strategy="reference")
    do_small = torch.randn(o_ref.shape, generator=torch.Generator().manual_seed(11)).cuda()
    o_ref.backward(do_small)
    x = make_op_inputs("mlstm", Shape(B=4, T=4096, H=16, K=128, V=128), torch.bfloat16, "cuda", seed=0)
    xg = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    do = torch.randn(4, 4096, 16, 128, device="cuda", dtype=torch.bfloat16)
    real = chunk_scalar.default_config
    out: dict = {}
    try:
        for name, over in [*fwd.items(), *bwd.items()]:
            chunk_scalar.default_config = lambda sig, shape, over=over, **kw: {
                **real(sig, shape, **kw),
                **over,
            }
            row: dict = {"over": over}
            try:
                got = {k: v.detach().clone().requires_grad_() for k, v in small.items()}
                o, _ = ops.mlstm(**got, strategy="chunk")
                o.float().backward(do_small)
                row["err"] = {"o": round(rel_err(o, o_ref), 6)} | {
                    f"d{k}": round(rel_err(got[k].grad, ref[k].grad), 6) for k in got
                }
                if name.startswith("F"):

                    def f():
                        with torch.no_grad():
                            return ops.mlstm(**x, strategy="chunk")

                    row["fwd_ms"] = round(float(do_bench(f, warmup=10, rep=100, return_mode="median")), 4)
                else:

                    def f():
                        ops.mlstm(**xg, strategy="chunk")[0].backward(do)

                    row["fwd_bwd_ms"] = round(float(do_bench(f, warmup=10, rep=100, return_mode="median")), 4)
            except Exception as err:  # a config the compiler refuses is a result too
                row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
            out[name] = row
            print(name, row, flush=True)
    finally:
        chunk_scalar.default_config = real
    report["mixed_tiles"] = out


def scan_ab(report: dict, rounds: int = 5) -> None:
    """The forward of the scan strategy's core at the Mamba-1 shape, the study's timed function."""
    from scandsl.bench.gpu_check_scan import MAMBA, mamba_inputs
    from scandsl.lowering import scan

    sig = CoreSig(decay=Decay.CHANNEL)
    x = mamba_inputs(sig, MAMBA.T, grad=False)
    default = scan.default_config(sig, MAMBA)
    configs = {"default": {}, "BT32_BV8": {"BT": 32, "BV": 8}, "BT16_BV4": {"BT": 16, "BV": 4},
               "default_kq16": {"kq_f32": False}}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in configs}
    clocks: list[dict] = []
    for _ in range(rounds):
        clocks.append(_clocks())
        for name, over in configs.items():
            cfg = {**default, **over}

            def fwd(cfg=cfg):
                with torch.no_grad():
                    return scan.run(sig, x, cfg)

            times[name].append(round(float(do_bench(fwd, warmup=25, rep=200, return_mode="median")), 4))
    report["scan_ab"] = {"default_config": default, "configs": configs, "rounds_ms": times, "clocks": clocks,
                         "median_ms": {k: statistics.median(v) for k, v in times.items()}}  # fmt: skip
    print(json.dumps(report["scan_ab"]), flush=True)


_PROBE_START = """\
    t_start = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
    smid = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32, is_pure=False, pack=1)
"""
_PROBE_END = """\
    t_end = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
    pid = (i_nh * NK + i_k) * tl.num_programs(0) + i_v
    tl.store(probe + pid * 3, smid.to(tl.int64))
    tl.store(probe + pid * 3 + 1, t_start)
    tl.store(probe + pid * 3 + 2, t_end)
"""


def _probed_scan_module(sig):
    """The scan module with ``scan_fwd_kernel`` instrumented: a first argument ``probe`` (int64
    [programs, 3]) receives each program's SM, start and end time."""
    from scandsl.lowering._source import load_source
    from scandsl.lowering.scan_source import generate_source

    src = generate_source(sig)
    head, rest = src.split("def scan_fwd_kernel(\n", 1)
    body, tail = rest.split("\n@triton.jit", 1)
    body = "    probe," + body[3:] if body.startswith("   ") else body
    body = body.replace("    o_t = tl.arange(0, BT)\n", "    o_t = tl.arange(0, BT)\n" + _PROBE_START, 1)
    body = body.replace("    if STORE_HT:\n", _PROBE_END + "    if STORE_HT:\n", 1)
    assert "probe + pid" in body and "t_start" in body, "scan source changed: update the probe"
    return load_source(head + "def scan_fwd_kernel(\n" + body + "\n@triton.jit" + tail, name="scan_probe")


def scan_place(report: dict, rounds: int = 3, launches: int = 20) -> None:
    import time
    import types

    from scandsl.bench.gpu_check_scan import MAMBA, mamba_inputs
    from scandsl.lowering import scan

    sig = CoreSig(decay=Decay.CHANNEL)
    x = mamba_inputs(sig, MAMBA.T, grad=False)
    mod = _probed_scan_module(sig)
    default = scan.default_config(sig, MAMBA)
    configs = {"default": {}, "default_kq16": {"kq_f32": False}, "BT32_BV8": {"BT": 32, "BV": 8},
               "BT32_BV8_kq16": {"BT": 32, "BV": 8, "kq_f32": False}, "BT4_BV64": {"BT": 4, "BV": 64},
               "BT8_BV32": {"BT": 8, "BV": 32}}  # fmt: skip
    flush = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    out: dict = {"n_sm": n_sm, "configs": configs, "default_config": default, "launches": {}}
    real = scan.kernels
    try:
        for rnd, (name, over), mode in itertools.product(
            range(rounds), configs.items(), ("flush", "back2back", "idle")
        ):
            cfg = {**default, **over}
            nv = -(-MAMBA.V // cfg["BV"])
            programs = nv * MAMBA.B * MAMBA.H
            probe = torch.zeros(programs, 3, dtype=torch.int64, device="cuda")

            class _Launch:
                def __init__(self, probe):
                    self.probe = probe

                def __getitem__(self, grid):
                    return lambda *a, **kw: mod.scan_fwd_kernel[grid](self.probe, *a, **kw)

            probed = types.SimpleNamespace(scan_fwd_kernel=_Launch(probe))
            scan.kernels = lambda s, probed=probed, **_: probed
            rows = []
            with torch.no_grad():
                scan.run(sig, x, cfg)  # compile
                torch.cuda.synchronize()
                for _ in range(launches):
                    if mode == "flush":
                        flush.zero_()
                    elif mode == "idle":
                        torch.cuda.synchronize()
                        time.sleep(0.002)
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    scan.run(sig, x, cfg)
                    e1.record()
                    torch.cuda.synchronize()
                    p = probe.cpu()
                    per_sm = torch.bincount(p[:, 0], minlength=n_sm)
                    dur = (p[:, 2] - p[:, 1]).double() / 1e6
                    rows.append({"ms": round(e0.elapsed_time(e1), 4),
                                 "span_ms": round(float(p[:, 2].max() - p[:, 1].min()) / 1e6, 4),
                                 "max_per_sm": int(per_sm.max()), "sms_used": int((per_sm > 0).sum()),
                                 "prog_ms_median": round(float(dur.median()), 4), "prog_ms_max": round(float(dur.max()), 4),
                                 "start_spread_ms": round(float(p[:, 1].max() - p[:, 1].min()) / 1e6, 4)})  # fmt: skip
            out["launches"].setdefault(f"{name}/{mode}", []).extend(rows)
            ms = [r["ms"] for r in rows]
            print(
                rnd,
                name,
                mode,
                "ms",
                statistics.median(ms),
                min(ms),
                max(ms),
                "max/SM",
                sorted({r["max_per_sm"] for r in rows}),
                "SMs",
                sorted({r["sms_used"] for r in rows}),
                flush=True,
            )
    finally:
        scan.kernels = real
    report["scan_place"] = out


def seq_ab(report: dict, rounds: int = 5) -> None:
    """The sequential forward of gla at the standard shape: the default (4 warps, since the grid
    study) against the old default (1 warp), the core alone and through the public op,
    alternated over rounds — the recurrent part timed the op at 6.2 ms where the grid timed the
    core at 2.35 (and the afternoon the op at 3.05 with 1 warp)."""
    from scandsl.lowering import sequential

    sig = CoreSig(decay=Decay.KEY)
    shape = Shape(B=4, T=4096, H=16, K=128, V=128)
    x = make_op_inputs("gla", shape, torch.bfloat16, "cuda", seed=0)
    from scandsl.testing import random_core_inputs

    cores = {
        h0: random_core_inputs(sig, B=4, T=4096, H=16, K=128, V=128, dtype=torch.bfloat16, device="cuda",
                               with_state=h0)
        for h0 in (True, False)
    }  # fmt: skip
    default = sequential.default_config(sig, shape)
    variants = {"default": default, "one_warp": {**default, "num_warps": 1}}
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for (name, cfg), h0 in itertools.product(variants.items(), (True, False)):

            def core_fwd(cfg=cfg, core=cores[h0]):
                with torch.no_grad():
                    return sequential.run(sig, core, cfg)

            ms = float(do_bench(core_fwd, warmup=25, rep=200, return_mode="median"))
            times.setdefault(f"core/{name}" + ("" if h0 else "/no_h0"), []).append(round(ms, 4))

        def op_fwd():
            with torch.no_grad():
                return ops.gla(**x, strategy="sequential")

        times.setdefault("op/default", []).append(
            round(float(do_bench(op_fwd, warmup=25, rep=200, return_mode="median")), 4)
        )
    report["seq_ab"] = {"default_config": default, "rounds_ms": times,
                        "median_ms": {k: statistics.median(v) for k, v in times.items()}}  # fmt: skip
    print(json.dumps(report["seq_ab"]), flush=True)


def _clocks() -> dict:
    """SM / memory clock, power, temperature and active throttle reasons, now (nvidia-smi)."""
    import subprocess

    fields = "clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active"
    out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    return dict(zip(fields.split(","), (x.strip() for x in out.split(","))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--only",
        choices=("mlstm_grads", "mixed_cost", "mixed_tiles", "scan_ab", "seq_ab", "scan_place"),
        default=None,
    )
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    parts = {"mlstm_grads": mlstm_grads, "mixed_cost": mixed_cost, "mixed_tiles": mixed_tiles, "scan_ab": lambda r: scan_ab(r, args.rounds),
             "seq_ab": lambda r: seq_ab(r, args.rounds),
             "scan_place": lambda r: scan_place(r, min(args.rounds, 3))}  # fmt: skip
    for name, part in parts.items():
        if args.only not in (None, name):
            continue
        try:
            part(report)
        except Exception as err:  # report what ran; the other part still runs
            report[name + "_error"] = f"{type(err).__name__}: {err}"
            print(report[name + "_error"], flush=True)
        (args.out / "diagnose.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
