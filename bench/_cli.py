"""``python -m scandsl.bench`` / ``scandsl bench``: run parts on a GPU, render results anywhere.

    python -m scandsl.bench list
    python -m scandsl.bench run --part std1,std2 --out $OUT        (GPU; JSON per part)
    python -m scandsl.bench render bench/results/*.json             (CPU; docs + PNGs)

``run`` exits with status 1 when any kernel of ours failed its correctness check (it is
reported as WRONG, with no time), 2 when no GPU is present.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["bench_main", "add_bench_subparser"]


def _add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_command", required=True)
    sub.add_parser("list", help="the named parts of the standard suite")
    r = sub.add_parser("run", help="run parts of the suite (needs a CUDA GPU)")
    r.add_argument("--part", required=True, help="comma-separated part names (see `list`)")
    r.add_argument("--out", type=Path, required=True, help="folder for bench-<part>.json")
    r.add_argument("--budget-s", type=float, default=400.0,
                   help="stop starting new cases once this many seconds have passed, over all the parts "
                        "of the command (default 400: with a case's own run time, under 8 minutes)")  # fmt: skip
    r.add_argument("--only", default=None,
                   help="comma-separated substrings: run only the cases whose name contains one (e.g. a rerun "
                        "of cases a budget skipped)")  # fmt: skip
    r.add_argument(
        "--check-T", type=int, default=4096, help="reference check on the first N steps (default 4096)"
    )
    r.add_argument("--timing", choices=("graph", "eager"), default="graph",
                   help="graph (default): CUDA-graph replays, with the eager do_bench time beside them; "
                        "eager: do_bench only")  # fmt: skip
    c = sub.add_parser("compare", help="two runs of one part: do the ratios repeat within the reported noise?")
    c.add_argument("first", type=Path)
    c.add_argument("second", type=Path)
    c.add_argument("--strict", action="store_true", help="exit 1 when a ratio moved by more than its noise")
    d = sub.add_parser("render", help="markdown tables, plots and docs/performance.md from JSON results")
    d.add_argument("results", nargs="+", type=Path)
    d.add_argument("--doc", type=Path, default=Path("docs/performance.md"))
    d.add_argument("--img", type=Path, default=Path("docs/img"))
    d.add_argument("--stdout", action="store_true", help="print the markdown instead of updating --doc")


def add_bench_subparser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="benchmarks vs flash-linear-attention / mamba_ssm and the floor")
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def bench_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scandsl.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    _add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from ._suite import PARTS

    if args.bench_command == "list":
        for name, make in PARTS.items():
            cases = make()
            print(f"{name:14s} {len(cases):2d} cases: {', '.join(c.name for c in cases)}")
        return 0
    if args.bench_command == "render":
        return _render(args)
    if args.bench_command == "compare":
        return _compare(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    import torch

    from ._floor import measure_ceilings
    from ._harness import do_bench_ms, graph_and_eager_ms
    from ._run import environment, print_failures, run_part, wrong_kernels
    from ._suite import part_cases

    if not torch.cuda.is_available():
        print("scandsl bench run: no CUDA GPU here; `render` works anywhere", file=sys.stderr)
        return 2
    import time

    start = time.perf_counter()
    device = torch.device("cuda")
    env = environment(device)
    ceilings = measure_ceilings(device)
    status = 0
    timer = graph_and_eager_ms if args.timing == "graph" else do_bench_ms
    for part in [p.strip() for p in args.part.split(",") if p.strip()]:
        out = args.out / f"bench-{part}.json"
        left = args.budget_s - (time.perf_counter() - start)
        cases = part_cases(part)
        if args.only:
            keys = [k.strip() for k in args.only.split(",") if k.strip()]
            cases = [c for c in cases if any(k in c.name for k in keys)]
        payload = run_part(part, cases, out, device=device, budget_s=max(left, 0.0), check_T=args.check_T,
                           ceilings=ceilings, env=env, timer=timer)  # fmt: skip
        print(f"wrote {out}")
        if wrong_kernels(payload):
            print_failures(payload)
            status = 1
        if payload.get("device_fault"):
            print(f"stopped: device fault in {payload['device_fault']}; later parts not run", file=sys.stderr)
            return 1
    return status


def _compare(args: argparse.Namespace) -> int:
    import json

    from ._compare import code_changed, compare_markdown, compare_runs

    first, second = (json.loads(Path(p).read_text()) for p in (args.first, args.second))
    rows = compare_runs(first, second)
    changed = code_changed(first, second)
    if changed:
        print(f"warning: {changed}\n")
    print(compare_markdown(rows))
    outside = [r for r in rows if abs(r.get("ratio_change", r["time_change"])) > r.get("ratio_noise", r["time_noise"])]
    print(f"{len(rows) - len(outside)} of {len(rows)} repeat within the reported noise")
    return 1 if args.strict and outside else 0


def _render(args: argparse.Namespace) -> int:
    from ._render import load_results, plot_all, render_markdown, update_doc

    payloads = load_results(args.results)
    images = plot_all(payloads, args.img)
    rel = (
        args.img.resolve().relative_to(args.doc.parent.resolve())
        if _inside(args.img, args.doc.parent)
        else args.img
    )
    text = render_markdown(payloads, images, img_rel=str(rel))
    if args.stdout:
        print(text)
    else:
        update_doc(args.doc, text)
        print(f"updated {args.doc} ({len(payloads)} parts, {len(images)} plots in {args.img})")
    return 0


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False
