"""Two runs of the same part side by side: does each ratio repeat within the noise each run reports?

    python -m scandsl.bench compare first/bench-std1.json second/bench-std1.json

Per case and mode, for every implementation of ours: the change of its time, and of its ratio
to the best anchor, between the runs, against the noise both runs reported (half the 20–80 %
quantile range of ``do_bench`` over the median, per measurement). A ratio's noise is the sum of
the four measurements' noises; a change within it is a repeat.
"""

from __future__ import annotations

from typing import Any

__all__ = ["compare_runs", "compare_markdown", "code_changed"]

_KEY = ("case", "impl", "mode")


def _ok(payload: dict[str, Any]) -> dict[tuple, dict]:
    return {tuple(r[k] for k in _KEY): r for r in payload["records"] if r.get("status") == "ok"}


def _best_anchor(ok: dict[tuple, dict], case: str, mode: str) -> dict | None:
    anchors = [r for (c, _, m), r in ok.items() if c == case and m == mode and r.get("kind") == "anchor"]
    return min(anchors, key=lambda r: r["ms"]) if anchors else None


def compare_runs(first: dict[str, Any], second: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (case, our impl, mode) timed in both runs."""
    a, b = _ok(first), _ok(second)
    rows = []
    for key in sorted(set(a) & set(b)):
        ra, rb = a[key], b[key]
        if ra.get("kind") != "ours":
            continue
        case, impl, mode = key
        noise = ra.get("noise", 0.0) + rb.get("noise", 0.0)
        row = {"case": case, "impl": impl, "mode": mode, "ms": (ra["ms"], rb["ms"]),
               "time_change": rb["ms"] / ra["ms"] - 1, "time_noise": noise}  # fmt: skip
        aa, ab = _best_anchor(a, case, mode), _best_anchor(b, case, mode)
        if aa is not None and ab is not None and aa["impl"] == ab["impl"]:
            ratio = (ra["ms"] / aa["ms"], rb["ms"] / ab["ms"])
            row.update(anchor=aa["impl"], ratio=ratio, ratio_change=ratio[1] / ratio[0] - 1,
                       ratio_noise=noise + aa.get("noise", 0.0) + ab.get("noise", 0.0))  # fmt: skip
        rows.append(row)
    return rows


def code_changed(first: dict[str, Any], second: dict[str, Any]) -> str | None:
    """Why the two runs timed different code (their ``env["code"]`` fingerprints differ), or None
    (same code, or a run from before fingerprints were recorded)."""
    a, b = (p.get("env", {}).get("code") for p in (first, second))
    if a and b and a != b:
        return (
            f"the runs timed different code (fingerprints {a} and {b}): a change between them may be "
            "the code's, not noise"
        )
    return None


def _verdict(change: float, noise: float) -> str:
    return "repeats" if abs(change) <= noise else "**outside the noise**"


def compare_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | impl | mode | ms (run 1 → 2) | change | noise | ratio to anchor (run 1 → 2) | change | noise | verdict |",
        "|---|---|---|---|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        t = f"{r['ms'][0]:.3f} → {r['ms'][1]:.3f}"
        if "ratio" in r:
            q = f"{r['ratio'][0]:.2f} → {r['ratio'][1]:.2f} ({r['anchor']})"
            qc, qn = f"{100 * r['ratio_change']:+.1f}%", f"±{100 * r['ratio_noise']:.1f}%"
            verdict = _verdict(r["ratio_change"], r["ratio_noise"])
        else:
            q, qc, qn = "–", "–", "–"
            verdict = _verdict(r["time_change"], r["time_noise"])
        lines.append(
            f"| {r['case']} | {r['impl']} | {r['mode']} | {t} | {100 * r['time_change']:+.1f}% | "
            f"±{100 * r['time_noise']:.1f}% | {q} | {qc} | {qn} | {verdict} |"
        )
    return "\n".join(lines) + "\n"
