"""The ``scandsl`` command: list / show specs, verify kernels, tune, benchmark, write docs.

scandsl list                         every spec, its formula and legal strategies
scandsl show NAME [--strategy S]     its normal form (and the generated Triton source)
scandsl verify [NAME ...]            every spec × built strategy against the reference
scandsl tune NAME --shape B,T,H,K,V  Optuna autotuning (see docs/autotune.md)
scandsl bench run --part PART        benchmarks against the anchors on a GPU (bench/README.md)
scandsl docs                         regenerate docs/taxonomy.md from the specs
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

__all__ = ["main", "all_specs", "taxonomy_markdown"]


def all_specs():
    """name -> (public op, spec used for its full form), taxonomy order."""
    from scandsl import ops

    return {name: (fn, specs[-1]) for name, (fn, specs) in ops.TAXONOMY.items()}


def _resolve(name: str):
    specs = all_specs()
    if name not in specs:
        raise SystemExit(f"unknown spec {name!r}; `scandsl list` shows them: {', '.join(specs)}")
    return specs[name][1]


def cmd_list(args) -> int:
    from scandsl._validate import _built_for

    table = Table(title="scandsl specs (the taxonomy)", show_lines=True)
    for col in ("spec", "recurrence ; read-out", "normal form", "legal", "built"):
        table.add_column(col, overflow="fold")
    for name, (_, spec) in all_specs().items():
        legal = spec.legal_strategies
        built = [s for s in legal[1:] if _built_for(spec, s)]
        table.add_row(
            name, spec.formula, spec.normal_form.describe(), ", ".join(legal), ", ".join(built) or "-"
        )
    Console(width=args.width).print(table)
    return 0


def cmd_show(args) -> int:
    spec = _resolve(args.name)
    con = Console(width=args.width)
    con.rule(f"[bold]{spec.name}")
    con.print(spec.formula)
    con.print("\n[bold]inputs[/bold]")
    for n, d in spec.inputs:
        flags = [
            f
            for f, on in (
                ("log-gate", d.is_log_gate),
                ("positive", d.is_positive),
                ("non-negative", d.is_nonneg),
                ("optional", d.is_optional),
            )
            if on
        ]
        con.print(f"  {n:8s} {d.shape_doc():16s} {' '.join(flags)}")
    con.print("\n[bold]normal form[/bold]")
    con.print(spec.normal_form.describe())
    for i, st in enumerate(spec.normal_form.stages):
        for role, node in list(st.operand_nodes().items()) + [
            (f"v[{j}]", v) for j, v in enumerate(st.values)
        ]:
            con.print(f"  stage {i} {role:6s} = {_pretty(node)}")
    con.print(f"legal strategies: {', '.join(spec.legal_strategies)}")
    if args.strategy:
        import inspect

        from scandsl._entry import source_options
        from scandsl.lowering import load_strategy

        module = load_strategy(args.strategy)
        if module is None or not hasattr(module, "generate_source"):
            raise SystemExit(f"strategy {args.strategy!r}: no generated source in this install")
        accepts = inspect.signature(module.generate_source).parameters
        for st in spec.normal_form.stages:
            variant = {k: on for k, on in source_options(spec, st, module).items() if k in accepts}
            sources = module.generate_source(st.sig, None, **variant)
            for kname, src in sources.items() if isinstance(sources, dict) else [("kernel", sources)]:
                con.rule(f"{args.strategy}: {kname} ({st.sig.describe()})")
                print(src)
    return 0


def _pretty(node) -> str:
    from scandsl._pretty import to_sympy

    try:
        return str(to_sympy(node))
    except Exception:  # noqa: BLE001 - display only
        return repr(node)


def cmd_verify(args) -> int:
    from scandsl._verify import verify

    return verify(args.names or list(all_specs()), width=args.width)


def taxonomy_markdown() -> str:
    from scandsl._pretty import to_sympy

    lines = [
        "# The taxonomy, generated from the specs",
        "",
        "Written by `scandsl docs` from `scandsl.ops` — do not edit by hand; it cannot drift from the code.",
        "",
        "| op | inputs | recurrence ; read-out | normal form | legal strategies |",
        "|---|---|---|---|---|",
    ]
    for name, (_, spec) in all_specs().items():
        inputs = ", ".join(f"`{n}` {d.shape_doc()}" for n, d in spec.inputs)
        nf = "<br>".join(spec.normal_form.describe().splitlines())
        lines.append(f"| `{name}` | {inputs} | {spec.formula} | {nf} | {', '.join(spec.legal_strategies)} |")
    lines += ["", "## Core operands per stage (as the prologue computes them)", ""]
    for name, (_, spec) in all_specs().items():
        for i, st in enumerate(spec.normal_form.stages):
            ops_ = ", ".join(f"{r} = `{to_sympy(n)}`" for r, n in st.operand_nodes().items())
            vals = ", ".join(f"`{to_sympy(v)}`" for v in st.values)
            lines.append(f"- `{name}` stage {i} ({' + '.join(st.states)}): {ops_}; value columns {vals}")
    return "\n".join(lines) + "\n"


def cmd_docs(args) -> int:
    out = Path(args.out)
    out.write_text(taxonomy_markdown())
    print(f"wrote {out}")
    return 0


@dataclass(frozen=True)
class _TuneTarget:
    spec_key: str
    stages: tuple
    legal: tuple[str, ...]
    spec: object

    def stage_shapes(self, shape):
        """Each stage's own core size: fused normaliser columns widen V; slots (M) default to 64."""
        from scandsl._core import Shape

        sizes = {"K": shape.K, "V": shape.V, "M": 64}
        out = []
        for st in self.spec.normal_form.stages:  # type: ignore[attr-defined]
            K = sizes[st.k.axes[-1]] if st.k.axes else 1
            V = sum(sizes[v.axes[0]] if v.axes else 1 for v in st.values)
            out.append(Shape(shape.B, shape.T, shape.H, K, V))
        return out


def _tune_resolver(name: str):
    spec = _resolve(name)
    stages = tuple(st.sig for st in spec.normal_form.stages)
    return _TuneTarget(spec.key, stages, spec.legal_strategies[1:], spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scandsl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=None, help="terminal width for tables")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every spec, formula, legal strategies").set_defaults(func=cmd_list)
    p = sub.add_parser("show", help="a spec's normal form (and generated kernels)")
    p.add_argument("name")
    p.add_argument("--strategy", choices=("sequential", "scan", "chunk"), default=None)
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("verify", help="check every spec × built strategy against the reference")
    p.add_argument("names", nargs="*")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("docs", help="regenerate docs/taxonomy.md from the specs")
    p.add_argument("--out", default="docs/taxonomy.md")
    p.set_defaults(func=cmd_docs)
    from scandsl.autotune import add_tune_subparser
    from scandsl.bench import add_bench_subparser

    add_tune_subparser(sub, resolve=_tune_resolver)
    add_bench_subparser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
