"""Showing a tuning run: a progress bar, the final table, and a PNG of the search history.

``rich`` draws the bar and the table when it is installed (a dependency of scandsl, but a
bare GPU machine may lack it), otherwise plain lines are printed; matplotlib is optional
and only needed for the plot.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._evaluate import TrialRecord
    from ._tune import TuneResult

__all__ = ["Progress", "summary_rows", "format_table", "print_table", "plot_history"]


class Progress:
    """A context manager with ``update(record)``; silent when ``enabled`` is False."""

    def __init__(self, total: int = 0, title: str = "", *, enabled: bool = True) -> None:
        self.total, self.title, self.enabled = total, title, enabled
        self.best: float | None = None
        self.done = 0
        self._rich: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if not self.enabled:
            return self
        try:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress
        except ImportError:
            print(f"{self.title}: {self.total} candidates", file=sys.stderr)
            return self
        self._rich = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[best]}"), transient=False,
        )  # fmt: skip
        self._rich.__enter__()
        self._task = self._rich.add_task(self.title, total=self.total, best="")
        return self

    def update(self, rec: TrialRecord, *, fresh: bool = True) -> None:
        """One outcome; only ``fresh`` evaluations (not re-used, not invalid) advance the bar."""
        counts = fresh and rec.state != "invalid"
        self.done += counts
        if rec.ok and (self.best is None or rec.ms < self.best):
            self.best = rec.ms
        if not self.enabled or not counts:
            return
        best = f"best {self.best:.4g} ms" if self.best is not None else "no success yet"
        if self._rich is not None:
            self._rich.update(self._task, advance=1, best=best)
        else:
            what = f"{rec.ms:.4g} ms" if rec.ok else f"{rec.state}: {rec.reason[:60]}"
            print(f"  [{self.done}/{self.total}] {rec.label()}: {what} ({best})", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)


def summary_rows(result: TuneResult) -> list[dict[str, Any]]:
    """best / heuristic default / worst, each with its speed-up over... the best's speed-up over it."""
    best = result.best
    rows = []
    for label, rec in (("best", best), ("heuristic default", result.default), ("worst", result.worst)):
        if rec is None:
            continue
        ms = rec.ms if rec.ok else None
        rows.append(
            {
                "row": label,
                "strategy": rec.strategy,
                "config": rec.config,
                "ms": ms,
                "state": rec.state,
                "best_speedup": (ms / best.ms) if (ms is not None and best is not None) else None,
            }
        )
    return rows


def _cfg(cfg: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in cfg.items()) or "-"


def format_table(result: TuneResult) -> str:
    """The final table as plain text (also what the rich table shows)."""
    lines = [f"{'':18} {'strategy':10} {'ms':>10} {'best is x faster':>16}  config"]
    for row in summary_rows(result):
        ms = f"{row['ms']:.4f}" if row["ms"] is not None else row["state"]
        sp = f"{row['best_speedup']:.2f}x" if row["best_speedup"] is not None else "-"
        lines.append(f"{row['row']:18} {row['strategy']:10} {ms:>10} {sp:>16}  {_cfg(row['config'])}")
    counts = ", ".join(f"{v} {k}" for k, v in sorted(result.counts().items()))
    lines.append(f"{len(result.records)} trials ({counts}); {result.evaluations} distinct evaluations; "
                 f"sampler {result.sampler}; {result.seconds:.1f} s")  # fmt: skip
    return "\n".join(lines)


def print_table(result: TuneResult, *, file=None) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(format_table(result), file=file or sys.stdout)
        return
    table = Table(title=f"{result.key.spec_key} [{result.key.sig}] on {result.key.device}")
    for col in ("", "strategy", "ms", "best is x faster", "config"):
        table.add_column(col, justify="right" if col in ("ms", "best is x faster") else "left")
    for row in summary_rows(result):
        ms = f"{row['ms']:.4f}" if row["ms"] is not None else row["state"]
        sp = f"{row['best_speedup']:.2f}x" if row["best_speedup"] is not None else "-"
        table.add_row(row["row"], row["strategy"], ms, sp, _cfg(row["config"]))
    console = Console(file=file)
    console.print(table)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(result.counts().items()))
    console.print(f"{len(result.records)} trials ({counts}); {result.evaluations} distinct evaluations; "
                  f"sampler {result.sampler}; {result.seconds:.1f} s")  # fmt: skip


def plot_history(result: TuneResult, path: Path | str, *, grid_best_ms: float | None = None) -> Path | None:
    """Scatter of every trial's time by strategy, failures marked, and the best-so-far line.

    Returns the path, or None when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ok = [r for r in result.records if r.ok]
    strategies = sorted({r.strategy for r in result.records})
    for s in strategies:
        pts = [(r.number, r.ms) for r in ok if r.strategy == s]
        if pts:
            ax.scatter(*zip(*pts), s=14, label=s, alpha=0.75)
    bad = [r for r in result.records if r.state in ("error", "wrong")]
    top = max((r.ms for r in ok), default=1.0)
    if bad:
        ax.scatter(
            [r.number for r in bad], [top * 1.05] * len(bad), marker="x", c="red", s=18, label="failed/wrong"
        )
    xs = [r.number for r in result.records]
    ax.step(xs, result.best_so_far(), where="post", c="black", lw=1.2, label="best so far")
    if result.default is not None and result.default.ok:
        ax.axhline(result.default.ms, ls="--", c="gray", lw=1, label="heuristic default")
    if grid_best_ms is not None:
        ax.axhline(grid_best_ms, ls=":", c="green", lw=1, label="grid best")
    ax.set_xlabel("trial")
    ax.set_ylabel("median ms")
    ax.set_yscale("log")
    ax.set_title(f"{result.key.spec_key} [{result.key.sig}] {result.key.dtype}, {result.sampler}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
