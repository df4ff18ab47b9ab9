"""``scandsl tune NAME --shape B,T,H,K,V``: the command-line face of :func:`tune`.

The CLI itself (``scandsl/cli.py``) wires this with :func:`add_tune_subparser`, handing
over a *resolver* that turns NAME into a :class:`TuneTarget` — the only thing this module
needs from the spec layer::

    class TuneTarget(Protocol):
        spec_key: str                 # stable hash of the spec (part of the cache key)
        stages: Sequence[CoreSig]     # its core recurrence(s), in order
        legal: tuple[str, ...]        # strategies legal for the spec
        # optional: stage_shapes(shape) -> Sequence[Shape], each stage's own core problem size
        # (default: every stage at the command's shape)

Without a resolver, names ``core:<sig>`` (``core:scalar``, ``core:key``, ... from
``scandsl.testing.TAXONOMY_SIGS``) tune a bare core recurrence, which needs no spec.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from scandsl import knobs
from scandsl._core import CoreSig, Decay, Shape, Transition

__all__ = [
    "TuneTarget",
    "CoreTarget",
    "core_target",
    "add_tune_subparser",
    "tune_main",
    "parse_shape",
    "DTYPES",
]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class TuneTarget(Protocol):
    spec_key: str
    stages: Sequence[CoreSig]
    legal: tuple[str, ...]


Resolver = Callable[[str], TuneTarget]


@dataclass(frozen=True)
class CoreTarget:
    spec_key: str
    stages: tuple[CoreSig, ...]
    legal: tuple[str, ...]


def core_legal(sig: CoreSig) -> tuple[str, ...]:
    """Legal strategies of a bare core signature (taxonomy.md, 'Legal strategies')."""
    legal = ["sequential"]
    if sig.transition is not Transition.DELTA:
        legal.append("scan")
    if sig.decay is not Decay.CHANNEL:
        legal.append("chunk")
    return tuple(legal)


def core_target(name: str) -> CoreTarget:
    from scandsl.testing import TAXONOMY_SIGS

    sig_name = name.removeprefix("core:")
    if sig_name not in TAXONOMY_SIGS:
        raise SystemExit(
            f"scandsl tune: unknown core signature {sig_name!r}; known: {', '.join(TAXONOMY_SIGS)}"
        )
    sig = TAXONOMY_SIGS[sig_name]
    return CoreTarget(spec_key=f"core:{sig_name}", stages=(sig,), legal=core_legal(sig))


def parse_shape(text: str) -> Shape:
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 5 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--shape wants five positive integers B,T,H,K,V; got {text!r}")
    return Shape(*parts)


def parse_fix(text: str) -> tuple[str, Any]:
    """``num_stages=2`` -> ("num_stages", 2): the value read as JSON when it parses, else as text."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected PARAM=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="op / spec name (or core:<sig> for a bare core recurrence)")
    p.add_argument("--shape", type=parse_shape, required=True, help="B,T,H,K,V (K is N for per-channel rows)")
    p.add_argument("--trials", type=int, default=40,
                   help="fresh evaluations (compiled, checked, timed) Optuna may spend (default 40)")  # fmt: skip
    p.add_argument("--budget-s", type=float, default=None, help="also stop after this many seconds per stage")
    p.add_argument("--storage", default=None,
                   help="journal file path or RDB URL shared by several processes/hosts "
                        "(default: the journal under SCANDSL_CACHE_DIR)")  # fmt: skip
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--sampler", default="tpe", choices=("tpe", "random", "gp", "cmaes", "qmc"))
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--objective", choices=("fwd", "fwd_bwd"), default="fwd", help="what is timed")
    p.add_argument("--check-grads", action="store_true", help="also check gradients on the probe")
    p.add_argument("--grid", action="store_true", help="exhaustive grid instead of Optuna")
    p.add_argument("--fix", type=parse_fix, action="append", default=[], metavar="PARAM=VALUE",
                   help="pin a parameter out of the searched space (repeatable)")  # fmt: skip
    p.add_argument("--compile-workers", type=int, default=0, metavar="N",
                   help="with --grid on a GPU: compile the grid in N processes before timing it "
                        "(e.g. min(12, cores - 2); default 0: compile while walking)")  # fmt: skip
    p.add_argument("--plot", type=Path, default=None,
                   help="PNG of the search history (default: <cache>/plots/<name>-<stage>.png)")  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="write every trial record here")
    p.add_argument("--no-cache", action="store_true", help="do not record the winner")
    p.add_argument("--no-progress", action="store_true")


def add_tune_subparser(subparsers, *, resolve: Resolver | None = None) -> argparse.ArgumentParser:
    """Add ``tune`` to an argparse subparsers object; ``args.func(args)`` runs it."""
    p = subparsers.add_parser("tune", help="autotune strategy and tiles for one op and shape")
    _add_arguments(p)
    p.set_defaults(func=lambda args: run(args, resolve=resolve))
    return p


def tune_main(argv: Sequence[str] | None = None, *, resolve: Resolver | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scandsl tune", description="Autotune one op for one shape.")
    _add_arguments(parser)
    return run(parser.parse_args(argv), resolve=resolve)


def run(args: argparse.Namespace, *, resolve: Resolver | None = None) -> int:
    from ._evaluate import DeviceFault
    from ._json import record_to_json, result_to_json
    from ._report import plot_history, print_table
    from ._tune import grid_search, tune

    if args.name.startswith("core:"):
        target: TuneTarget = core_target(args.name)
    elif resolve is None:
        raise SystemExit(
            f"scandsl tune: cannot resolve {args.name!r} here; use core:<sig>, or run it as `scandsl tune`"
        )
    else:
        target = resolve(args.name)
    if args.compile_workers and not args.grid:
        raise SystemExit("scandsl tune: --compile-workers pre-compiles a grid; use it with --grid")
    dtype = DTYPES[args.dtype]
    status = 0
    dump = []
    # optional: the core problem each stage really runs (a fused normaliser column, a slot axis)
    stage_shapes = getattr(target, "stage_shapes", None)
    shapes = list(stage_shapes(args.shape)) if stage_shapes is not None else [args.shape] * len(target.stages)
    for i, sig in enumerate(target.stages):
        shape = shapes[i]
        common = dict(progress=not args.no_progress, objective=args.objective, check_grads=args.check_grads,
                      budget_s=args.budget_s, fix=dict(args.fix))  # fmt: skip
        if args.grid:
            result = grid_search(
                target.spec_key,
                sig,
                shape,
                dtype,
                tuple(target.legal),
                write_cache=not args.no_cache,
                compile_workers=args.compile_workers,
                **common,
            )
        else:
            try:
                result = tune(
                    target.spec_key, sig, shape, dtype, tuple(target.legal), make_inputs=None,
                    trials=args.trials, storage=args.storage, sampler=args.sampler, seed=args.seed,
                    write_cache=not args.no_cache, **common,
                )  # fmt: skip
            except DeviceFault as fault:
                print(f"scandsl tune: stopped: {fault}", file=sys.stderr)
                if args.json is not None:  # what was measured before the fault is not lost with the process
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    partial = {
                        "device_fault": str(fault),
                        "stage": i,
                        "records": [record_to_json(r) for r in fault.records],
                    }
                    args.json.write_text(json.dumps(dump + [partial], indent=1))
                return 1
        print_table(result)
        if "device_fault" in result.meta:
            print(f"grid stopped early: {result.meta['device_fault']}", file=sys.stderr)
            status = 1
        plot = args.plot
        stem = f"{args.name.replace(':', '_')}-{result.key.sig}"
        if plot is None:
            plot = knobs.cache_dir() / "plots" / f"{stem}.png"
        elif len(target.stages) > 1:
            plot = plot.with_name(f"{plot.stem}-{i}{plot.suffix}")
        written = plot_history(result, plot)
        print(
            f"search history: {written}" if written else "search history: matplotlib not installed, no plot"
        )
        if result.best is None:
            print(f"no candidate passed for stage {i} ({sig.describe()})", file=sys.stderr)
            status = 1
        dump.append(result_to_json(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dump, indent=1))
    return status
