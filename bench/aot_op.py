"""Compile, for sm_90 and without a GPU, every kernel one op launches: forward and backward.

The interpreter accepts programs the GPU compiler refuses (a ``tl.dot`` whose operands differ in
dtype, a block below 16 rows), so a kernel that passes every CPU test can still fail to build on
the device. This runs the op at a small shape under ``TRITON_INTERPRET=1``, records each launch
(kernel, argument dtypes, constexprs, warps, stages) and hands it to Triton's ahead-of-time
compiler for Hopper; a refusal is reported with the kernel's name and the compiler's message.

    TRITON_INTERPRET=1 python bench/aot_op.py gated_rfa --strategy chunk --dtype bfloat16
    TRITON_INTERPRET=1 python bench/aot_op.py --all --out aot.json     # every row x strategy

Registers, spill and wgmma counts come out too (as in ``gpu_check_* --aot``); the numbers are
those of the local Triton, which may differ from the device's.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if "--compile-from" not in sys.argv:  # recording runs the op on the CPU, under the interpreter
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._gpu_check import aot_compile  # noqa: E402

__all__ = ["launches_of", "compile_launches"]

_TRITON_TYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32",
                torch.int32: "i32", torch.int64: "i64", torch.bool: "i1"}  # fmt: skip


def _arg_type(x) -> str:
    if isinstance(x, torch.Tensor):
        return "*" + _TRITON_TYPE[x.dtype]
    if isinstance(x, bool):
        return "i1"
    if isinstance(x, int):
        return "i32"
    if isinstance(x, float):
        return "fp32"
    raise TypeError(f"no Triton type for a launch argument of type {type(x).__name__}")


def launches_of(fn) -> list[dict]:
    """Run ``fn()`` under the interpreter; each distinct launch: kernel file and name, argument
    types, constexprs / warps / stages."""
    seen: dict[str, tuple] = {}
    from triton.runtime.interpreter import InterpretedFunction

    original = InterpretedFunction.run

    def record(self, *args, grid, **kw):
        bound = dict(zip(self.arg_names, args)) | {k: v for k, v in kw.items() if k != "warmup"}
        params = inspect.signature(self.fn).parameters
        meta, types = {}, {}
        for name, a in bound.items():
            constexpr = name not in params or "constexpr" in str(params[name].annotation)
            if constexpr or a is None:  # (Triton specialises a None argument as a constexpr)
                meta[name] = a
            else:
                types[name] = _arg_type(a)
        key = f"{self.fn.__module__}.{self.fn.__name__}{sorted(types.items())}{sorted(meta.items(), key=str)}"
        seen.setdefault(key, {"file": sys.modules[self.fn.__module__].__file__,
                              "kernel": self.fn.__name__, "types": types, "meta": meta})  # fmt: skip
        return original(self, *args, grid=grid, **kw)

    InterpretedFunction.run = record
    try:
        fn()
    finally:
        InterpretedFunction.run = original
    return list(seen.values())


def _compiled(path: str, name: str):
    """A kernel as a compilable ``JITFunction``, imported from its module's file (run in a process
    without the interpreter: an interpreted kernel calls interpreted helpers)."""
    import importlib.util

    if path not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"_aot_{len(_MODULES)}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[path] = module
    return getattr(_MODULES[path], name)


_MODULES: dict[str, object] = {}


def compile_launches(launches: list[dict]) -> list[dict]:
    """AOT-compile each recorded launch for sm_90: resource usage, or the compiler's error."""
    results = []
    for launch in launches:
        row = {"kernel": launch["kernel"], "meta": launch["meta"]}
        meta = {"num_warps": 4, "num_stages": 3} | launch["meta"]  # Triton's launch defaults
        try:
            jit = _compiled(launch["file"], launch["kernel"])
            row.update(aot_compile(jit, meta, launch["types"].__getitem__))
            row["ok"] = True
        except Exception as e:  # the point is to report it
            row.update(ok=False, error=f"{type(e).__name__}: {str(e)[-1500:]}")
        results.append(row)
    return results


def _compile_elsewhere(launches: list[dict]) -> list[dict]:
    """``compile_launches`` in a fresh process with the interpreter off."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "launches.json", Path(tmp) / "compiled.json"
        src.write_text(json.dumps(launches, default=str))
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        subprocess.run([sys.executable, __file__, "--compile-from", str(src), "--out", str(dst)],
                       env=env, check=True)  # fmt: skip
        return json.loads(dst.read_text())


def run_op(name: str, strategy: str, dtype: torch.dtype, T: int = 70):
    """Forward and backward of ``scandsl.ops.<name>`` at a small, awkward shape, on the benchmark's
    inputs (feature tensors in ``dtype``, gates and per-head parameters float32, as models keep them)."""
    from bench._inputs import make_op_inputs, op_spec
    from scandsl._core import Shape

    fn, _ = op_spec(name)

    def go():
        inputs = make_op_inputs(name, Shape(B=1, T=T, H=2, K=32, V=32), dtype, "cpu", seed=0, slots=16)
        for x in inputs.values():
            x.requires_grad_(x.is_floating_point())
        out = fn(**inputs, strategy=strategy)
        o = out[0] if isinstance(out, tuple) else out
        o.float().sum().backward()

    return go


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="ops (rows of the taxonomy)")
    ap.add_argument("--all", action="store_true", help="every row x every legal compiled strategy")
    ap.add_argument("--strategy", default=None, help="one strategy (default: every legal one)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--T", type=int, default=70, help="steps of the recorded run (spans chunks at 70)")
    ap.add_argument("--no-compile", action="store_true", help="only run the op under the interpreter")
    ap.add_argument("--compile-from", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help="JSON report")
    args = ap.parse_args(argv)
    if args.compile_from:  # the second process: compile what the first recorded
        args.out.write_text(json.dumps(compile_launches(json.loads(args.compile_from.read_text()))))
        return 0
    from scandsl.ops import TAXONOMY

    from bench._inputs import op_spec

    names = list(TAXONOMY) if args.all else args.names
    if not names:
        ap.error("name at least one op, or --all")
    dtype = getattr(torch, args.dtype)
    report, failed = [], 0
    for name in names:
        legal = [s for s in op_spec(name)[1].legal_strategies if s != "reference"]
        strategies = [args.strategy] if args.strategy else legal
        for strategy in strategies:
            t0 = time.time()
            try:
                launches = launches_of(run_op(name, strategy, dtype, args.T))
            except Exception as e:  # the interpreter refused it already
                launches, failed = [], failed + 1
                msg = f"{type(e).__name__}: {str(e)[-300:]}"
                report.append({"op": name, "strategy": strategy, "ok": False, "error": msg})
                print(f"{name:15s} {strategy:10s} INTERPRETER FAILED {msg}", flush=True)
            rows = _compile_elsewhere(launches) if launches and not args.no_compile else []
            for r in rows:
                r.update(op=name, strategy=strategy)
                failed += not r["ok"]
                status = (f"{r['regs']} regs, spill {r['spill_stack']} B, wgmma {r['wgmma']}" if r["ok"]
                          else "FAILED " + r["error"].splitlines()[0][:200])  # fmt: skip
                print(f"{name:15s} {strategy:10s} {r['kernel']:28s} {status}", flush=True)
            print(f"{name:15s} {strategy:10s} ({len(rows)} kernels, {time.time() - t0:.1f} s)", flush=True)
            report.extend(rows)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str))
    print(f"{failed} of {len(report)} kernels refused by the sm_90 compiler")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
