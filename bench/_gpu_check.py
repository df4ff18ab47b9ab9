"""What every ``bench/gpu_check_*.py`` script shares: the incremental JSON report, and the
ahead-of-time sm_90 compile that reads a kernel's registers, spills and shared memory on a
machine without a GPU (``--aot``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import triton

__all__ = ["Report", "aot_compile"]


class Report:
    """A JSON file rewritten after every result, so a run stopped at its time limit keeps what it
    measured; ``left()`` is the time budget still open."""

    def __init__(self, path: Path, budget: float, device: str | None = None, *, echo: bool = False, **fields):
        if device is None:
            device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        self.path, self.budget, self.echo = Path(path), budget, echo
        self.start = time.time()
        self.data: dict[str, Any] = {"device": device, "triton": triton.__version__, "torch": torch.__version__,
                                     **fields}  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.time() - self.start)

    def put(self, section: str, key: str, value: Any) -> None:
        self.data.setdefault(section, {})[key] = value
        self.save()
        if self.echo:
            print(f"[{self.data['elapsed_s']:6.1f}s] {section}/{key}: {value}", flush=True)

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.start, 1)
        self.path.write_text(json.dumps(self.data, indent=1, default=str))


def aot_compile(kernel, meta: dict, arg_type: Callable[[str], str], int_args: Iterable[str] = (),
                *, sass: bool = False) -> dict:  # fmt: skip
    """Compile ``kernel`` for sm_90 without a GPU: registers, spill stack, shared memory, wgmma count.

    ``meta`` holds the constexprs plus ``num_warps`` / ``num_stages``; ``arg_type(name)`` gives
    every other argument's Triton type (``"*bf16"``, ``"i32"``, ...). Pointers and ``int_args``
    get the 16-divisibility the JIT would specialise at the timed shape.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    meta = dict(meta)
    options = {"num_warps": meta.pop("num_warps"), "num_stages": meta.pop("num_stages")}
    sig = {n: "constexpr" if n in meta else arg_type(n) for n in kernel.arg_names}
    divisible = set(int_args)
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names)
             if sig[n].startswith("*") or n in divisible}  # fmt: skip
    constexprs = {(kernel.arg_names.index(n),): v for n, v in meta.items()}
    t0 = time.time()
    ck = triton.compile(ASTSource(kernel, sig, constexprs=constexprs, attrs=attrs),
                        target=GPUTarget("cuda", 90, 128), options=options)  # fmt: skip
    tools = Path(triton.__file__).parent / "backends/nvidia/bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as fh:
        fh.write(ck.asm["cubin"])
    try:
        usage = subprocess.run([str(tools / "cuobjdump"), "--dump-resource-usage", fh.name],
                               capture_output=True, text=True).stdout  # fmt: skip
        text = (
            subprocess.run([str(tools / "nvdisasm"), "-c", fh.name], capture_output=True, text=True).stdout
            if sass
            else ""
        )
    finally:
        os.unlink(fh.name)
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    out = {"regs": int(m.group(1)) if m else None, "spill_stack": int(m.group(2)) if m else None,
           "smem": ck.metadata.shared, "wgmma": ck.asm["ptx"].count("wgmma.mma_async"),
           "compile_s": round(time.time() - t0, 1)}  # fmt: skip
    return {**out, **loop_opcodes(text)} if sass else out


def loop_opcodes(sass: str) -> dict:
    """Opcode counts of the longest loop in ``nvdisasm -c`` output (the span from a label to the
    furthest branch back to it): a kernel's steady state, e.g. one time block of a scan."""
    ops: list[tuple[str, str]] = []
    label_at: dict[str, int] = {}
    for line in sass.splitlines():
        if m := re.match(r"\s*(\.L_x_\d+):", line):
            label_at[m.group(1)] = len(ops)
        elif m := re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*);", line):
            ops.append((m.group(1), m.group(2)))
    loops = [(label_at[t.group(1)], j + 1) for j, (op, rest) in enumerate(ops)
             if op.startswith("BRA") and (t := re.search(r"(\.L_x_\d+)", rest)) and label_at.get(t.group(1), j + 1) <= j]  # fmt: skip
    span = max(loops, key=lambda ab: ab[1] - ab[0], default=(0, len(ops)))
    counts = Counter(op.split(".")[0] for op, _ in ops[span[0] : span[1]])
    return {"loop_instructions": span[1] - span[0], "loop_mufu": counts.get("MUFU", 0),
            "loop_opcodes": dict(counts.most_common())}  # fmt: skip
