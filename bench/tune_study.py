"""Does Optuna find the grid's best config with a quarter of the grid's evaluations? (issue 7)

    python -m scandsl.bench.tune_study run --out $OUT           (GPU, one command, < 8 min)
    python -m scandsl.bench.tune_study replay $OUT/tune_study.json  (CPU: re-run the sampler study)

``run`` on one op's core stage (default: mamba2 at B=4, T=4096, H=16, K=V=128, bf16, the
``chunk`` strategy, forward time):

1. walks the exhaustive grid (in a shuffled order, within ``--grid-budget-s``: a stopped
   walk is then an unbiased sample and says so), every config checked against the
   reference before it is timed;
2. runs a live TPE search with a budget of 25 % of the grid's size (default included);
3. replays each sampler (TPE, random, GP where scipy is present) for several seeds on the
   recorded grid — no GPU time — to report how often each lands within 3 % of the grid best
   and after how many evaluations;
4. measures ``choose()`` on the GPU (the hot path after tuning).

Writes ``tune_study.json``, ``tune_history.png`` (the live search) and
``tune_samplers.png`` (best found vs evaluations, median over seeds) under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "sampler_study"]


def _lookup(grid, rec) -> float | None:
    for r in grid.records:
        if r.ok and r.strategy == rec.strategy and r.config == rec.config:
            return r.ms
    return None


def sampler_study(grid, *, samplers: list[str], seeds: int, budget: int) -> dict[str, Any]:
    """Replay each sampler on the recorded grid; per sampler: hits within 3 %, best ratios, curves."""
    from scandsl.autotune import replay

    best = grid.best.ms
    out: dict[str, Any] = {}
    for sampler in samplers:
        try:
            runs = [replay(grid, sampler=sampler, trials=budget, seed=s) for s in range(seeds)]
        except (ImportError, ModuleNotFoundError) as err:
            out[sampler] = {"absent": str(err)}
            continue
        ratios = [r.best.ms / best for r in runs]
        curves = []
        for r in runs:  # best found vs fresh evaluations
            fresh = [rec for rec in r.records if not rec.extra.get("reused") and rec.state != "invalid"]
            cur, curve = None, []
            for rec in fresh:
                if rec.ok and (cur is None or rec.ms < cur):
                    cur = rec.ms
                curve.append(cur / best if cur else None)
            curves.append(curve)
        out[sampler] = {
            "within_3pct": sum(x <= 1.03 for x in ratios),
            "seeds": seeds,
            "median_best_ratio": statistics.median(ratios),
            "worst_best_ratio": max(ratios),
            "evaluations": [r.evaluations for r in runs],
            "curves": curves,
        }
    return out


def _plot_samplers(study: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for sampler, res in study.items():
        if "curves" not in res:
            continue
        n = max(len(c) for c in res["curves"])
        med = []
        for i in range(n):
            vals = [c[i] for c in res["curves"] if i < len(c) and c[i] is not None]
            med.append(statistics.median(vals) if vals else None)
        xs = [i + 1 for i, v in enumerate(med) if v is not None]
        ax.plot(
            xs,
            [v for v in med if v is not None],
            label=f"{sampler} ({res['within_3pct']}/{res['seeds']} ≤ 3%)",
        )
    ax.axhline(1.03, ls=":", c="gray", lw=1, label="grid best + 3%")
    ax.set_xlabel("fresh evaluations")
    ax.set_ylabel("best found ÷ grid best (median over seeds)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _resolve(op: str):
    from scandsl import ops

    _, specs = ops.TAXONOMY[op]
    spec = specs[0]
    return spec.key, spec.normal_form.stages[0].sig


def _choose_us(spec_key, sig, shape, dtype, legal) -> float:
    from scandsl.autotune import choose

    choose(spec_key, sig, shape, dtype, legal)
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        choose(spec_key, sig, shape, dtype, legal)
    return (time.perf_counter() - t0) / n * 1e6


def run(args: argparse.Namespace) -> int:
    import torch
    from scandsl.autotune import grid_search, tune
    from scandsl.autotune._json import result_to_json
    from scandsl.autotune._report import format_table, plot_history

    from scandsl._core import Shape

    if args.device == "cuda" and not torch.cuda.is_available():
        print("tune_study run needs a CUDA GPU (or --device cpu with TRITON_INTERPRET=1 as a smoke test)",
              file=sys.stderr)  # fmt: skip
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    shape = Shape(*[int(x) for x in args.shape.split(",")])
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    spec_key, sig = _resolve(args.op)
    legal = tuple(args.strategies.split(","))
    t0 = time.perf_counter()
    payload: dict[str, Any] = {"op": args.op, "shape": list(shape), "dtype": args.dtype, "legal": legal}

    def save() -> None:
        payload["seconds"] = time.perf_counter() - t0
        (out / "tune_study.json").write_text(json.dumps(payload, indent=1))

    done = [0]

    def tick(rec) -> None:
        done[0] += 1
        if done[0] % 10 == 0:
            print(f"  grid: {done[0]} evaluated, {time.perf_counter() - t0:.0f} s", flush=True)

    fix = dict(args.fix)
    payload["fix"] = fix
    grid = grid_search(spec_key, sig, shape, dtype, legal, progress=False, budget_s=args.grid_budget_s, fix=fix,
                       shuffle_seed=0, on_record=tick, device=args.device,
                       compile_workers=args.compile_workers)  # fmt: skip
    payload["grid"] = result_to_json(grid)
    save()
    if "precompile_s" in grid.meta:
        print(
            f"  grid pre-compile: {grid.meta['precompiled']} configs in {grid.meta['precompile_s']:.0f} s",
            flush=True,
        )
    spent = [(r.extra["check_s"], r.extra["time_s"]) for r in grid.records if "time_s" in r.extra]
    if spent:
        check, timing = (statistics.median(x) for x in zip(*spent))
        print(f"  grid walk per config (median): check {check:.2f} s, timing {timing:.2f} s", flush=True)
    print(format_table(grid), flush=True)
    if grid.best is None:
        print("no grid config passed its check", file=sys.stderr)
        return 1
    budget = max(2, grid.meta["grid_size"] // 4 - 1)  # + the default = 25 % of the full grid
    with tempfile.TemporaryDirectory() as cache:
        live = tune(spec_key, sig, shape, dtype, legal, make_inputs=None, trials=budget, progress=False, seed=0, fix=fix,
                    storage=out / "tune_study.journal", cache_dir=Path(cache), budget_s=args.live_budget_s,
                    device=args.device)  # fmt: skip
    payload["live"] = result_to_json(live)
    on_grid = _lookup(grid, live.best) if live.best else None
    payload["live_summary"] = {
        "budget": budget,
        "evaluations": live.evaluations,
        "grid_size": grid.meta["grid_size"],
        "grid_evaluated": len(grid.records),
        "grid_complete": grid.meta["complete"],
        "grid_best_ms": grid.best.ms,
        "live_best_ms": live.best.ms if live.best else None,
        "live_best_grid_ms": on_grid,
        "ratio_to_grid_best": (on_grid or (live.best.ms if live.best else float("nan"))) / grid.best.ms,
        "default_ms": grid.default.ms if grid.default and grid.default.ok else None,
    }
    save()
    print(format_table(live), flush=True)
    plot_history(live, out / "tune_history.png", grid_best_ms=grid.best.ms)
    samplers = args.samplers.split(",")
    payload["samplers"] = sampler_study(grid, samplers=samplers, seeds=args.seeds, budget=budget)
    _plot_samplers(payload["samplers"], out / "tune_samplers.png")
    payload["choose_us"] = _choose_us(spec_key, sig, shape, dtype, legal)
    save()
    print(summary_markdown(payload))
    return 0


def summary_markdown(p: dict[str, Any]) -> str:
    s = p["live_summary"]
    lines = [
        f"Autotune study: {p['op']} {p['shape']} {p['dtype']}, strategies {', '.join(p['legal'])}, forward time"
        + (f", pinned {p['fix']}." if p.get("fix") else "."),
        f"- grid: {s['grid_evaluated']} of {s['grid_size']} configs evaluated"
        + ("" if s["grid_complete"] else " (time budget; shuffled order, so an unbiased sample)")
        + f"; best {s['grid_best_ms']:.4f} ms; heuristic default {s['default_ms'] or float('nan'):.4f} ms",
        f"- live TPE: {s['evaluations']} evaluations (budget {s['budget']} = 25% of the grid incl. the default); "
        f"best {s['live_best_ms'] or float('nan'):.4f} ms, i.e. {s['ratio_to_grid_best']:.3f}x the grid best"
        " (the grid's time for that config, where the grid has it)",
    ]
    for sampler, r in p.get("samplers", {}).items():
        if "absent" in r:
            lines.append(f"- replay {sampler}: absent ({r['absent'][:80]})")
        else:
            lines.append(f"- replay {sampler}: within 3% of the grid best on {r['within_3pct']}/{r['seeds']} seeds; "
                         f"median best {r['median_best_ratio']:.3f}x, worst {r['worst_best_ratio']:.3f}x")  # fmt: skip
    if "choose_us" in p:
        lines.append(f"- choose() hot path on this machine: {p['choose_us']:.2f} µs per call")
    return "\n".join(lines)


def replay_cmd(args: argparse.Namespace) -> int:
    from scandsl.autotune._json import result_from_json

    payload = json.loads(Path(args.json).read_text())
    grid = result_from_json(payload["grid"])
    if args.without_default:  # the sampler alone: the heuristic default is not handed to it first
        grid = dataclasses.replace(grid, default=None)
    # a stopped (sampled) grid is the whole world of a replay: a quarter of *it* is the budget
    size = grid.meta["grid_size"] if grid.meta.get("complete") else len(grid.records)
    budget = max(2, size // 4 - 1)
    print(f"replay budget: {budget} evaluations + the default, of {size} recorded configs")
    payload["samplers"] = sampler_study(
        grid, samplers=args.samplers.split(","), seeds=args.seeds, budget=budget
    )
    if args.plot:
        _plot_samplers(payload["samplers"], Path(args.plot))
    if "live_summary" in payload:
        print(summary_markdown(payload))
    else:
        print(
            json.dumps(
                {
                    k: {kk: vv for kk, vv in v.items() if kk != "curves"}
                    for k, v in payload["samplers"].items()
                },
                indent=1,
            )
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    from scandsl.autotune._cli import parse_fix

    parser = argparse.ArgumentParser(prog="python -m scandsl.bench.tune_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--op", default="mamba2")
    r.add_argument("--shape", default="4,4096,16,128,128")
    r.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    r.add_argument("--strategies", default="chunk")
    r.add_argument("--grid-budget-s", type=float, default=270.0)
    r.add_argument("--fix", type=parse_fix, action="append", default=[], metavar="PARAM=VALUE",
                   help="pin a parameter for grid and search alike, so a large space has a grid one call can finish")  # fmt: skip
    r.add_argument("--compile-workers", type=int, default=0, metavar="N",
                   help="compile the grid in N processes before timing it (GPU only; suggested: "
                        f"min(12, cores - 2) = {min(12, (os.cpu_count() or 2) - 2)} here; default 0)")  # fmt: skip
    r.add_argument("--live-budget-s", type=float, default=120.0)
    r.add_argument("--samplers", default="tpe,random,gp")
    r.add_argument("--seeds", type=int, default=10)
    r.add_argument(
        "--device", default="cuda", help="cpu: a smoke test of the script under TRITON_INTERPRET=1"
    )
    r.set_defaults(func=run)
    p = sub.add_parser("replay")
    p.add_argument("json", type=Path)
    p.add_argument("--samplers", default="tpe,random,gp")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--plot", default=None)
    p.add_argument("--without-default", action="store_true",
                   help="do not evaluate the heuristic default first (where it is the grid's best, a search that starts there is trivial)")  # fmt: skip
    p.set_defaults(func=replay_cmd)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
