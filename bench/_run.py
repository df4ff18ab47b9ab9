"""Running parts of the suite on a GPU and writing their JSON results.

The results file is rewritten (atomically) after every case, so a run stopped at its
time limit still leaves everything measured so far; cases that would start after the
``budget_s`` deadline are recorded as ``skipped``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scandsl._device import is_device_fault

from ._anchors import anchor_versions
from ._floor import Ceilings, measure_ceilings
from ._harness import Case, Timer, run_case

__all__ = ["environment", "code_fingerprint", "run_part", "write_json"]


def _driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


_CODE_PACKAGES = ("scandsl", "scandsl.lowering", "scandsl.autotune", "scandsl.ops", "scandsl.reference")


def code_fingerprint() -> str:
    """A hash of the library's Python sources as they ran (the device gets the tree without
    ``.git``): two runs with different fingerprints timed different code, so ``compare`` does not
    read their differences as noise."""
    import hashlib
    import importlib

    digest = hashlib.sha256()
    for name in _CODE_PACKAGES:
        root = Path(importlib.import_module(name).__file__ or "").parent
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def environment(device: torch.device) -> dict[str, Any]:
    import scandsl

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "capability": ".".join(map(str, torch.cuda.get_device_capability(device)))
        if device.type == "cuda"
        else "",
        "driver": _driver() if device.type == "cuda" else "",
        "cuda": torch.version.cuda or "",
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "scandsl": scandsl.__version__,
        "anchors": anchor_versions(),
        "code": code_fingerprint(),
    }
    return env


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


def run_part(
    part: str,
    cases: list[Case],
    out: Path,
    *,
    device: torch.device | str = "cuda",
    budget_s: float = 420.0,
    check_T: int = 4096,
    ceilings: Ceilings | None = None,
    timer: Timer | None = None,
    env: dict[str, Any] | None = None,
    log: Callable[[str], None] = lambda s: print(s, flush=True),
) -> dict[str, Any]:
    """Run ``cases``; write ``out`` (JSON) after each; returns the payload."""
    start = time.perf_counter()
    device = torch.device(device)
    env = env or environment(device)
    ceilings = ceilings or measure_ceilings(device)
    log(
        f"[{part}] {env['gpu']}: copy {ceilings.copy_gbps:.0f} GB/s, bf16 matmul {ceilings.matmul_tflops:.0f} TFLOP/s"
    )
    payload: dict[str, Any] = {"part": part, "env": env, "ceilings": ceilings.to_json(), "records": []}
    fault = None  # once a kernel breaks the CUDA context, nothing later in this process can run
    for case in cases:
        elapsed = time.perf_counter() - start
        skip = (
            f"device fault in {fault}: the CUDA context is lost; rerun the part without that case (--only)"
            if fault
            else f"time budget ({budget_s:.0f} s) spent" if elapsed > budget_s else None
        )
        if skip is not None:
            payload["records"].append(
                {"case": case.name, "op": case.op, "group": case.group, "x": case.x, "impl": "-", "kind": "-",
                 "mode": "-", "status": "skipped", "reason": skip}
            )  # fmt: skip
            log(f"[{case.name}] skipped: {skip}")
            continue
        first = len(payload["records"])
        t0 = time.perf_counter()
        try:
            payload["records"] += run_case(
                case, ceilings=ceilings, device=device, check_T=check_T, timer=timer, log=log
            )
        except Exception as err:  # one broken case must not lose the others' numbers
            payload["records"].append(
                {"case": case.name, "op": case.op, "group": case.group, "x": case.x, "impl": "-", "kind": "-",
                 "mode": "-", "status": "error", "reason": f"{type(err).__name__}: {err}"[:400]}
            )  # fmt: skip
            log(f"[{case.name}] case failed: {type(err).__name__}: {err}")
        hit = next((r for r in payload["records"][first:] if is_device_fault(r.get("reason", ""))), None)
        if hit is not None:
            fault = f"{case.name} ({hit['impl']}: {hit['reason'][:160]})"
            payload["device_fault"] = fault
        log(f"[{case.name}] done in {time.perf_counter() - t0:.1f} s")
        payload["seconds"] = time.perf_counter() - start
        write_json(out, payload)
    payload["seconds"] = time.perf_counter() - start
    write_json(out, payload)
    return payload


def wrong_kernels(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in payload["records"] if r.get("kind") == "ours" and r.get("status") == "wrong"]


def print_failures(payload: dict[str, Any], file=sys.stderr) -> None:
    for r in wrong_kernels(payload):
        print(f"WRONG KERNEL: {r['case']} {r['impl']} {r['mode']}: {r.get('reason', '')}", file=file)
