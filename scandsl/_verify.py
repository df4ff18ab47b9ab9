"""``scandsl verify``: every spec × built kernel strategy against the reference interpreter.

Outputs, final states and gradients of every input, on fresh random inputs at an awkward
size (T = 37, K = 12, V = 20, M = 6), fp32 kernels against a float64 oracle. On a machine
without a GPU the kernels run on the Triton interpreter.
"""

from __future__ import annotations

import os
import time

import torch
from rich.console import Console
from rich.table import Table

from scandsl.testing import TOLERANCES, random_spec_inputs, rel_err

__all__ = ["verify", "check_spec"]


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


def check_spec(spec, strategy: str, *, T: int = 37, seed: int = 0) -> tuple[float, float]:
    """(worst output/state rel. error, worst gradient rel. error) of ``strategy`` vs reference."""
    from scandsl import run

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x64 = random_spec_inputs(spec, T=T, dtype=torch.float64, seed=seed)
    x64 = {k: v.requires_grad_() for k, v in x64.items()}
    x32 = {k: v.detach().to(device, torch.float32).requires_grad_() for k, v in x64.items()}
    o, s = run(spec, **x32, strategy=strategy, output_final_state=True)
    o_ref, s_ref = run(spec, **x64, strategy="reference", output_final_state=True)
    fwd = max([rel_err(o, o_ref)] + [rel_err(a, b) for a, b in zip(_tuple(s), _tuple(s_ref))])
    gen = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(o_ref.shape, generator=gen, dtype=torch.float64)
    ga = torch.autograd.grad((o * w.to(o)).sum(), list(x32.values()), allow_unused=True)
    gb = torch.autograd.grad((o_ref * w).sum(), list(x64.values()), allow_unused=True)
    bwd = max([rel_err(a, b) for a, b in zip(ga, gb) if b is not None and a is not None] + [0.0])
    if any(a is None and b is not None and b.abs().max() > 0 for a, b in zip(ga, gb)):
        bwd = float("inf")
    return fwd, bwd


def verify(names, *, width=None) -> int:
    from scandsl._validate import _built_for
    from scandsl.cli import all_specs

    specs = all_specs()
    out_tol, grad_tol = TOLERANCES[torch.float32]
    where = (
        "GPU"
        if torch.cuda.is_available()
        else ("Triton interpreter" if os.environ.get("TRITON_INTERPRET") == "1" else "CPU")
    )
    table = Table(title=f"scandsl verify — fp32 kernels vs float64 reference ({where})")
    for col in ("spec", "strategy", "out/state err", "grad err", "s", "result"):
        table.add_column(col)
    failures = 0
    for name in names:
        spec = specs[name][1]
        for strategy in spec.legal_strategies[1:]:
            if not _built_for(spec, strategy):
                table.add_row(name, strategy, "-", "-", "-", "[yellow]not built")
                continue
            t0 = time.perf_counter()
            try:
                fwd, bwd = check_spec(spec, strategy)
                ok = fwd <= out_tol and bwd <= grad_tol
                res = "[green]PASS" if ok else "[red]FAIL"
            except Exception as err:  # noqa: BLE001 - a crash is a failure to report
                fwd = bwd = float("nan")
                ok, res = False, f"[red]ERROR {type(err).__name__}: {str(err)[:60]}"
            failures += not ok
            table.add_row(name, strategy, f"{fwd:.1e}", f"{bwd:.1e}", f"{time.perf_counter() - t0:.1f}", res)
    Console(width=width).print(table)
    return 1 if failures else 0
