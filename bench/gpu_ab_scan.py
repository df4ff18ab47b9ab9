"""A/B of scan forward kernel variants at the Mamba-1 shape, in one process (GPU).

    python3 bench/gpu_ab_scan.py --out F.json [--variant NAME ...] [--budget-s 90] [--grad]

A variant is a source rewrite of the generated ``scan_fwd_kernel`` (the experiments below, kept
out of the generator until one pays) plus config overrides. Run 1 (2026-11-24,
``bench/results/gpu_ab_scan_run1.json``) ran on the generator before ``late_kq``, whose form
was then the rewrite ``kq_late``; the ``fma*`` variants were a config key (``exp2_fma``) then. Each runs ``scandsl.ops.mamba``
(B=4, T=4096, H=16, N=16, V=128, bf16, no gradients) with the rewritten module patched in, is
checked against the default's output, then timed two ways: the op as a CUDA graph replay after
an L2 flush (``bench/_harness.py::graph_ms``) and every kernel's device time from the torch
profiler (``gpu_profile.kernel_ms``), so the scan kernel's own time is in the report.

``unfused`` runs the op as before the skip term moved into the read-out (``scan.takes_skip``
patched off): the scan kernel, then the separate epilogue kernel for ``o + D ⊙ x`` (and its
generated backward). With ``--grad``, ``default`` and ``unfused`` are also timed forward+backward
(CUDA graph, and the kernels' profiler times), their gradients compared with ``default``'s.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch
from scandsl.bench._harness import graph_ms
from scandsl.bench._inputs import make_op_inputs, op_spec
from scandsl.lowering import scan
from scandsl.lowering._source import load_source

from scandsl._core import Shape
from scandsl.testing import rel_err

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_profile import kernel_ms  # noqa: E402

SHAPE = Shape(4, 4096, 16, 16, 128)


def _fwd_kernel(src: str) -> tuple[int, int]:
    i = src.index("def scan_fwd_kernel")
    return i, src.index("@triton.jit", i)


def _swap(src: str, pairs: list[tuple[str, str]]) -> str:
    i, j = _fwd_kernel(src)
    body = src[i:j]
    for old, new in pairs:
        assert old in body, f"variant rewrite: {old!r} not in scan_fwd_kernel"
        body = body.replace(old, new)
    return src[:i] + body + src[j:]


def kq_early(src: str) -> str:
    """k and q converted to fp32 in their load layout, before the broadcast (the forward until
    lowering/scan_slots.py::late_kq): twice the shared-memory bytes, a quarter of the conversions."""
    return _swap(
        src,
        [
            (
                "b_k = n_k  # [BT, BK], storage dtype: converted after its broadcast",
                "b_k = n_k.to(tl.float32)",
            ),
            (
                "b_q = n_q  # [BT, BK], storage dtype: converted after its broadcast",
                "b_q = n_q.to(tl.float32)",
            ),
            ("b_k[:, :, None].to(tl.float32) * b_w", "b_k[:, :, None] * b_w"),
            ("b_q[:, :, None].to(tl.float32), axis=1)", "b_q[:, :, None], axis=1)"),
        ],
    )


_DECAY = "b_a = tl.exp2(b_gv[:, None, :] * b_A2[None, :, :])"

# 2^x on the FMA pipe (Cody-Waite): x = j + f, j = round(x), f in [-1/2, 1/2]; 2^f by a degree-5
# minimax polynomial (relative error 2e-7 in fp32), 2^j added to the exponent field
_EXP2_FMA = """
@triton.jit
def exp2_fma(x):
    x = tl.minimum(tl.maximum(x, -127.0), 127.0)
    t = x + 12582912.0  # 1.5 * 2^23: round(x) lands in the low bits of t's mantissa
    j = t - 12582912.0
    f = x - j
    p = 1.3264722819478021e-3 * f + 9.671513381435886e-3
    p = p * f + 5.5507337618986186e-2
    p = p * f + 0.24022242071897368
    p = p * f + 0.693146977584319
    p = p * f + 1.0
    bits = p.to(tl.int32, bitcast=True) + (t.to(tl.int32, bitcast=True) << 23)
    return bits.to(tl.float32, bitcast=True)


"""


def exp2_fma(every: int):
    """Every ``every``-th step of a block takes its gates' exp2 from ``exp2_fma`` (FMA pipe), the
    rest from the MUFU; the step of each register is known when compiling, so the ``where`` keeps
    one of the two (sm_90 build: 112 / 96 / 64 / 0 MUFU.EX2 a block for every = 8 / 4 / 2 / 1)."""

    def rewrite(src: str) -> str:
        x = "b_gv[:, None, :] * b_A2[None, :, :]"
        pick = f"tl.where((o_t % {every} == {every - 1})[:, None, None], exp2_fma(b_x), tl.exp2(b_x))"
        src = _swap(src, [(_DECAY, f"b_x = {x}\n        b_a = {pick}")])
        at = src.index("@triton.jit\ndef sequence_bounds")
        return src[:at] + _EXP2_FMA.lstrip("\n") + src[at:]

    return rewrite


def gates_ahead(src: str) -> str:
    """The next block's gates (its exp2s) computed at the end of this block, carried in registers."""
    ahead = "tl.exp2(n_gv.to(tl.float32)[:, None, :] * b_A2[None, :, :])"
    last = "        b_h = tl.sum(tl.where((o_t == BT - 1)[:, None, None], b_hs, -0.0), axis=0)\n"
    return _swap(
        src,
        [
            ("    for i_t in range(0, NT_n):", f"    n_a = {ahead}\n    for i_t in range(0, NT_n):"),
            (_DECAY, "b_a = n_a"),
            (last, last + f"        n_a = {ahead}\n"),
        ],
    )


REWRITES = {
    "none": None,
    "kq_early": kq_early,
    "gates_ahead": gates_ahead,
    **{f"fma{n}": exp2_fma(n) for n in (1, 2, 4, 8)},
}
VARIANTS = {  # name: (rewrite, config overrides)
    "default": ("none", {}),
    "kq_early": ("kq_early", {}),
    "bt16": ("none", {"BT": 16}),
    "kq_early_bt16": ("kq_early", {"BT": 16}),
    "gates_ahead_bt16": ("gates_ahead", {"BT": 16}),
    **{f"fma{n}": (f"fma{n}", {}) for n in (8, 4, 2, 1)},
    "unfused": ("none", {}),
}
SKIP_OFF = {"unfused"}  # variants whose op keeps the separate epilogue
GRAD_VARIANTS = ("default", "unfused")  # timed forward+backward too with --grad


def _patch(rewrite: str, over: dict, default_config, kernels, takes_skip) -> None:
    fn = REWRITES[rewrite]

    @functools.cache
    def patched(sig, value_gated=False, skip=False, shared_gate=False):
        if fn is None:
            return kernels(sig, value_gated, skip, shared_gate)
        src = scan.generate_source(sig, value_gated=value_gated, skip=skip, shared_gate=shared_gate)
        return load_source(fn(src), name=f"scan_ab_{rewrite}{'_skip' if skip else ''}{'_sg' if shared_gate else ''}")

    scan.kernels = patched
    scan.takes_skip = takes_skip
    scan.default_config = lambda *a, **kw: {**default_config(*a, **kw), **over}
    scan._resolve.cache_clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", default=[], help=f"one of {sorted(VARIANTS)} (repeatable)")
    ap.add_argument("--budget-s", type=float, default=90.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--grad", action="store_true", help=f"time {GRAD_VARIANTS} forward+backward too")
    a = ap.parse_args()
    names = ["default"] + [v for v in (a.variant or list(VARIANTS)) if v != "default"]
    fn, _ = op_spec("mamba")
    args = make_op_inputs("mamba", SHAPE, torch.bfloat16, torch.device("cuda"), seed=0)
    default_config, kernels, takes_skip = scan.default_config, scan.kernels, scan.takes_skip
    report: dict = {"device": torch.cuda.get_device_name(), "shape": list(SHAPE), "variants": {}}
    out, start, ref, ref_grads = Path(a.out), time.perf_counter(), None, None
    for name in names:
        rewrite, over = VARIANTS[name]
        row: dict = {"rewrite": rewrite, "config": over}
        if time.perf_counter() - start > a.budget_s:
            row["skipped"] = "budget"
        else:
            try:
                skip = takes_skip if name not in SKIP_OFF else (lambda sig: False)
                _patch(rewrite, over, default_config, kernels, skip)

                def call():
                    with torch.no_grad():
                        return fn(**args, strategy="scan")[0]

                o = call().float()
                torch.cuda.synchronize()
                if ref is None:
                    ref = o
                row["o_err"] = rel_err(o, ref)
                row["ms"], row["noise"] = graph_ms(call, [])
                row["kernel_ms"] = kernel_ms(call, name_width=40)
                if a.grad and name in GRAD_VARIANTS:
                    grads = _fwd_bwd(fn, args, row)
                    ref_grads = ref_grads or grads
                    row["grad_err"] = {k: rel_err(g, ref_grads[k]) for k, g in grads.items()}
            except Exception as err:  # a variant that breaks: recorded, next
                row["error"] = f"{type(err).__name__}: {err}"[:400]
        report["variants"][name] = row
        print(name, json.dumps(row), flush=True)
        out.write_text(json.dumps(report, indent=1))
    scan.default_config, scan.kernels, scan.takes_skip = default_config, kernels, takes_skip


def _fwd_bwd(fn, args: dict, row: dict) -> dict[str, torch.Tensor]:
    """Time the op forward+backward into ``row``; the gradients of one call, in fp32."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in args.items()}
    do = None

    def call():
        nonlocal do
        o = fn(**leaves, strategy="scan")[0]
        if do is None:
            gen = torch.Generator(device=o.device).manual_seed(1)
            do = torch.randn(o.shape, generator=gen, device=o.device).to(o.dtype)
        o.backward(do)

    call()
    torch.cuda.synchronize()
    grads = {k: v.grad.float().clone() for k, v in leaves.items()}
    row["fb_ms"], row["fb_noise"] = graph_ms(call, list(leaves.values()))
    row["fb_kernel_ms"] = kernel_ms(call, name_width=40)
    return grads


if __name__ == "__main__":
    main()
