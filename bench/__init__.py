"""Benchmark harness (issue 8): check against the reference, then time, beside anchors and the floor.

- :func:`op_case` / :func:`core_case` — what to run (ours per strategy, anchors, the reference);
- :func:`run_case` — check first (a wrong kernel is reported WRONG, never timed), then
  ``do_bench`` medians for fwd and fwd+bwd, with the floor from ceilings measured in the run;
- ``PARTS`` — the standard suite in named parts that each fit one GPU command;
- :func:`bench_main` / :func:`add_bench_subparser` — ``python -m scandsl.bench`` / ``scandsl bench``.

See bench/README.md for the GPU commands and docs/performance.md for the results.
"""

from ._cases import core_case, op_case
from ._cli import add_bench_subparser, bench_main
from ._floor import Ceilings, Work, floor_ms, measure_ceilings
from ._harness import Case, Impl, run_case
from ._suite import PARTS, part_cases

__all__ = [
    "Case",
    "Impl",
    "Ceilings",
    "Work",
    "PARTS",
    "op_case",
    "core_case",
    "run_case",
    "part_cases",
    "floor_ms",
    "measure_ceilings",
    "bench_main",
    "add_bench_subparser",
]
