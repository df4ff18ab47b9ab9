"""The benchmark harness on the CPU: floors, the correctness gate, anchors, rendering."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import scandsl.bench._cases as cases_mod
import torch
from scandsl.bench import Ceilings, Work, core_case, floor_ms, op_case, run_case
from scandsl.bench._anchors import Anchor, AnchorAbsent, anchors_for
from scandsl.bench._render import BEGIN, END, plot_all, render_markdown, update_doc
from scandsl.bench._run import run_part, wrong_kernels

from scandsl._core import Shape, core_reference
from scandsl.testing import TAXONOMY_SIGS

CEIL = Ceilings(copy_gbps=3000.0, matmul_tflops=687.0)
TINY = Shape(B=1, T=12, H=2, K=8, V=8)


def fake_timer(ms: float = 1.0):
    calls = []

    def timer(fn, grad_to_none):
        fn()  # run it, so a crash in fwd or bwd surfaces as in do_bench
        calls.append(len(grad_to_none))
        return ms + 0.1 * len(calls)

    timer.calls = calls
    return timer


# -- floors --------------------------------------------------------------------------------------
def test_floor_arithmetic_matches_the_standard_shape():
    B, T, H, K, V = 4, 4096, 16, 128, 128
    qkv = 2 * B * T * H * K + B * T * H * V  # elements of q, k, v
    work = Work.of(
        inputs_bytes=qkv * 2, output_bytes=B * T * H * V * 2, tokens_heads=B * T * H, state_elems=K * V
    )
    f = floor_ms(work, CEIL, "fwd")
    assert work.bytes_fwd == 268_435_456
    assert f["memory_ms"] == pytest.approx(268_435_456 / 3e12 * 1e3)
    assert f["memory_ms"] == pytest.approx(0.0895, abs=1e-4)  # design.md: 0.089 ms at 3.0 TB/s
    assert work.flops_fwd == 4 * B * T * H * K * V
    assert f["compute_ms"] == pytest.approx(work.flops_fwd / 687e12 * 1e3)
    assert f["floor_ms"] == max(f["memory_ms"], f["compute_ms"])
    fb = floor_ms(work, CEIL, "fwd_bwd")
    assert work.bytes_fwd_bwd == 2 * qkv * 2 + 2 * B * T * H * V * 2 + qkv * 2
    assert fb["floor_ms"] > f["floor_ms"]


# -- the correctness gate on fake core strategies -----------------------------------------------
class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o):
        return o.clone()

    @staticmethod
    def backward(ctx, g):
        return g * 3.0  # a planted backward bug


def _fake(kind: str):
    def run(sig, x, config):
        o, s = core_reference(sig, x)
        if kind == "wrong":
            o = o * 1.05
        elif kind == "bad_bwd":
            o = _ScaleGrad.apply(o)
        elif kind == "crash":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return o, s

    return SimpleNamespace(run=run, supports=lambda sig: None)


def _core_case(modes=("fwd", "fwd_bwd")):
    mods = {k: _fake(k) for k in ("good", "wrong", "bad_bwd", "crash")}
    return core_case(TAXONOMY_SIGS["scalar"], TINY, torch.float32, strategies=tuple(mods), loader=mods.get,
                     name="core scalar", modes=modes)  # fmt: skip


def test_wrong_kernel_is_never_timed():
    timer = fake_timer()
    recs = run_case(_core_case(), ceilings=CEIL, device="cpu", timer=timer, log=lambda s: None)
    by = {(r["impl"], r["mode"]): r for r in recs}
    assert by[("ours.good", "fwd")]["status"] == "ok" and by[("ours.good", "fwd")]["ms"] > 0
    assert by[("ours.good", "fwd_bwd")]["status"] == "ok" and by[("ours.good", "fwd_bwd")]["grad_err"] < 1e-5
    for mode in ("fwd", "fwd_bwd"):
        w = by[("ours.wrong", mode)]
        assert w["status"] == "wrong" and "ms" not in w and w["err"] > 1e-2
        assert (
            by[("ours.crash", mode)]["status"] == "error"
            and "illegal memory" in by[("ours.crash", mode)]["reason"]
        )
    # forward right, backward wrong: fwd is timed, fwd+bwd is refused
    assert by[("ours.bad_bwd", "fwd")]["status"] == "ok"
    bad = by[("ours.bad_bwd", "fwd_bwd")]
    assert bad["status"] == "wrong" and "ms" not in bad and "relative error" in bad["reason"]
    assert len(timer.calls) == 3  # good fwd, good fwd_bwd, bad_bwd fwd — nothing else was timed
    assert all(r["floor_ms"] > 0 and r["bytes"] > 0 for r in recs)


def test_long_T_is_checked_on_a_prefix():
    case = _core_case(modes=("fwd",))
    recs = run_case(case, ceilings=CEIL, device="cpu", timer=fake_timer(), check_T=5, log=lambda s: None)
    by = {r["impl"]: r for r in recs}
    assert by["ours.good"]["checked_T"] == 5 and by["ours.good"]["status"] == "ok"
    assert by["ours.wrong"]["status"] == "wrong"


# -- op cases, anchors ---------------------------------------------------------------------------
def _missing(x, opts):
    raise AnchorAbsent("fla_not_installed.chunk_gla not importable (No module named 'fla_not_installed')")


def _other_function(x, opts):
    def run():
        return x["v"].float() * 2.0, None  # computes something else entirely

    return run, []


def test_op_case_reports_absent_and_mismatched_anchors(monkeypatch, tmp_path):
    monkeypatch.setattr(
        cases_mod, "anchors_for",
        lambda op, kind: [Anchor("fla.missing", op, kind, _missing), Anchor("bad.mapping", op, kind, _other_function)],
    )  # fmt: skip
    case = op_case("gla", TINY, torch.float32, strategies=("reference",))
    payload = run_part("unit", [case], tmp_path / "bench-unit.json", device="cpu", ceilings=CEIL,
                       timer=fake_timer(), env=_env(), log=lambda s: None)  # fmt: skip
    by = {(r["impl"], r["mode"]): r for r in payload["records"]}
    assert (
        by[("fla.missing", "fwd")]["status"] == "absent"
        and "not importable" in by[("fla.missing", "fwd")]["reason"]
    )
    assert by[("bad.mapping", "fwd")]["status"] == "mismatch" and "ms" not in by[("bad.mapping", "fwd")]
    assert by[("ours.reference", "fwd_bwd")]["status"] == "ok"
    assert not wrong_kernels(payload)
    saved = json.loads((tmp_path / "bench-unit.json").read_text())
    assert saved["records"] == payload["records"] and saved["ceilings"]["copy_gbps"] == 3000.0


def test_real_anchor_table_names_the_fla_and_mamba_kernels():
    assert [a.name for a in anchors_for("mamba2", "chunk")] == [
        "fla.chunk_simple_gla", "mamba_ssm.mamba_chunk_scan_combined"]  # fmt: skip
    assert [a.name for a in anchors_for("gla", "recurrent")] == ["fla.fused_recurrent_gla"]
    for op in ("linear_attn", "retention", "gla", "rwkv6", "deltanet", "gated_deltanet"):
        assert anchors_for(op, "chunk"), op


def _naive_ssd(x, dt, A, B, C, chunk_size, initial_states=None, return_final_states=False):
    """Mamba's recurrence, literally: h = exp(dt A) h + dt x Bᵀ, y = C·h (G = H)."""
    b, t, h, p = x.shape
    n = B.shape[-1]
    state = (
        initial_states.clone() if initial_states is not None else torch.zeros(b, h, p, n, dtype=torch.float32)
    )
    ys = []
    for i in range(t):
        d = dt[:, i].float()[..., None, None]
        state = (
            torch.exp(d * A[None, :, None, None]) * state
            + d * x[:, i].float()[..., None] * B[:, i].float()[:, :, None]
        )
        ys.append((state * C[:, i].float()[:, :, None]).sum(-1))
    y = torch.stack(ys, 1).to(x.dtype)
    return (y, state) if return_final_states else y


def _naive_step(state, x, dt, A, B, C, D=None, dt_bias=None):
    if dt_bias is not None:
        dt = dt + dt_bias
    state.mul_(torch.exp(A[None] * dt[..., None])).add_(B[:, :, None, :] * (dt * x.float())[..., None])
    y = (state * C.float()[:, :, None, :]).sum(-1)
    return (y + D * x.float() if D is not None else y).to(x.dtype)


def test_mamba_mappings_compute_our_functions(monkeypatch, tmp_path):
    """The x = v/dt, A = −1, C = scale·q mapping (and the decode step's) checked on literal loops."""
    import scandsl.bench._anchors as anchors

    fns = {"mamba_chunk_scan_combined": _naive_ssd, "selective_state_update": _naive_step}
    monkeypatch.setattr(anchors, "_import", lambda module, attr: fns[attr])
    cases = [
        op_case("mamba2", TINY, torch.float32, strategies=("reference",), modes=("fwd",)),
        op_case("mamba2", Shape(3, 1, 2, 8, 8), torch.float32, strategies=("reference",), anchor_kind="decode",
                modes=("fwd",), decode=True),
        op_case("mamba", Shape(3, 1, 2, 4, 8), torch.float32, strategies=("reference",), anchor_kind="decode",
                modes=("fwd",), decode=True),
    ]  # fmt: skip
    payload = run_part("unit", cases, tmp_path / "b.json", device="cpu", ceilings=CEIL, timer=fake_timer(),
                       env=_env(), log=lambda s: None)  # fmt: skip
    status = {(r["case"], r["impl"]): r["status"] for r in payload["records"]}
    assert status[(cases[0].name, "mamba_ssm.mamba_chunk_scan_combined")] == "ok"
    assert status[(cases[1].name, "mamba_ssm.selective_state_update")] == "ok"
    assert status[(cases[2].name, "mamba_ssm.selective_state_update")] == "ok"


# -- rendering -----------------------------------------------------------------------------------
def _env():
    return {"date": "2026-01-01 00:00 UTC", "gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0", "driver": "580",
            "cuda": "13.0", "torch": "2.11", "triton": "3.6.0", "python": "3.12", "scandsl": "0.1.0",
            "anchors": {"fla": "0.6.0", "mamba_ssm": "2.3.2.post1"}}  # fmt: skip


def _rec(case, impl, kind, mode, status, ms=None, group="standard", x=None, **kw):
    r = {"case": case, "op": case.split()[0], "impl": impl, "kind": kind, "mode": mode, "status": status,
         "group": group, "x": x, "floor_ms": 0.09, "memory_ms": 0.09, "compute_ms": 0.02, **kw}  # fmt: skip
    if ms is not None:
        r["ms"] = ms
    return r


def test_markdown_plots_and_doc_markers(tmp_path):
    recs = [
        _rec("gla", "ours.chunk", "ours", "fwd", "ok", 0.5),
        _rec("gla", "ours.chunk", "ours", "fwd_bwd", "ok", 2.0),
        _rec("gla", "fla.chunk_gla", "anchor", "fwd", "ok", 0.8),
        _rec("gla", "fla.chunk_gla", "anchor", "fwd_bwd", "ok", 4.0),
        _rec("mamba2", "ours.chunk", "ours", "fwd", "wrong", err=0.3, reason="output relative error 3e-01"),
        _rec("mamba2", "fla.chunk_simple_gla", "anchor", "fwd", "absent", reason="fla not importable"),
    ]
    recs += [_rec(f"gla T={t}", impl, kind, "fwd", "ok", ms, group="sweep gla", x=t)
             for t in (1024, 2048) for impl, kind, ms in (("ours.chunk", "ours", 0.4), ("fla.chunk_gla", "anchor", 0.6))]  # fmt: skip
    payload = {"part": "std1", "env": _env(), "ceilings": CEIL.to_json(), "records": recs}
    md = render_markdown([payload])
    gla_row = next(line for line in md.splitlines() if line.startswith("| gla | ours.chunk"))
    assert "| 0.500 | 2.000 | 0.62 | 0.50 | 0.090 | 5.56 |" in gla_row and "anchor: fla.chunk_gla" in gla_row
    wrong_row = next(line for line in md.splitlines() if line.startswith("| mamba2 | ours.chunk"))
    assert "**WRONG**" in wrong_row and "0.3" not in wrong_row.split("|")[4]
    assert "| mamba2 | fla.chunk_simple_gla | absent |" in md
    assert "NVIDIA H100 80GB HBM3" in md and "Triton 3.6.0" in md and "3.00 TB/s" in md

    pytest.importorskip("matplotlib")
    images = plot_all([payload], tmp_path / "img")
    assert {p.name for p in images} == {"bench_ratio_to_anchor.png", "bench_sweep_gla.png"}
    assert all(p.stat().st_size > 1000 for p in images)

    doc = tmp_path / "performance.md"
    doc.write_text(
        f"# Performance\n\nhand-written intro\n\n{BEGIN}\nold numbers\n{END}\n\n## Notes\nkeep me\n"
    )
    update_doc(doc, render_markdown([payload], images))
    text = doc.read_text()
    assert "hand-written intro" in text and "keep me" in text and "old numbers" not in text
    assert text.count(BEGIN) == 1 and "![bench_sweep_gla](img/bench_sweep_gla.png)" in text
    fresh = tmp_path / "new.md"
    update_doc(fresh, "generated")
    assert BEGIN in fresh.read_text() and "generated" in fresh.read_text()


def test_cli_render_and_list(tmp_path, capsys):
    from scandsl.bench import bench_main

    payload = {"part": "std1", "env": _env(), "ceilings": CEIL.to_json(),
               "records": [_rec("gla", "ours.chunk", "ours", "fwd", "ok", 0.5)]}  # fmt: skip
    (tmp_path / "bench-std1.json").write_text(json.dumps(payload))
    doc = tmp_path / "docs" / "performance.md"
    assert bench_main(["render", str(tmp_path / "bench-std1.json"), "--doc", str(doc),
                       "--img", str(tmp_path / "docs" / "img")]) == 0  # fmt: skip
    assert "| gla | ours.chunk | 0.500 |" in doc.read_text()
    assert bench_main(["list"]) == 0
    assert "std1" in capsys.readouterr().out


def test_rerun_of_skipped_cases_completes_a_part():
    from scandsl.bench._render import merge_parts

    first = {"part": "std1", "env": _env(), "ceilings": CEIL.to_json(), "records": [
        _rec("gla", "ours.chunk", "ours", "fwd", "ok", 0.5),
        {"case": "mamba2", "impl": "-", "kind": "-", "mode": "-", "status": "skipped", "reason": "time budget"},
        _rec("retention", "ours.chunk", "ours", "fwd", "error", reason="boom"),
    ]}  # fmt: skip
    rerun = {"part": "std1", "env": _env(), "ceilings": CEIL.to_json(), "records": [
        _rec("mamba2", "ours.chunk", "ours", "fwd", "ok", 0.6),
        _rec("retention", "ours.chunk", "ours", "fwd", "ok", 0.4),
    ]}  # fmt: skip
    (merged,) = merge_parts([first, rerun])
    assert [(r["case"], r["status"]) for r in merged["records"]] == [
        ("gla", "ok"), ("mamba2", "ok"), ("retention", "ok")]  # fmt: skip
    # a rerun replaces the whole case: an anchor timed in the first run is not set against ours
    # from the second
    anchor = {**_rec("gla", "fla.chunk_gla", "anchor", "fwd_bwd", "ok", 3.7)}
    again = {**rerun, "records": [_rec("gla", "ours.chunk", "ours", "fwd", "ok", 0.4)]}
    (merged,) = merge_parts([{**first, "records": first["records"] + [anchor]}, again])
    assert [(r["case"], r["impl"]) for r in merged["records"] if r["case"] == "gla"] == [
        ("gla", "ours.chunk")
    ]


def test_fla_anchor_survives_a_broken_package_init(tmp_path, monkeypatch):
    """fla's __init__ imports its model code; the kernels are loaded without it if that breaks."""
    import sys

    from scandsl.bench._anchors import _import

    pkg = tmp_path / "fla"
    (pkg / "ops" / "gla").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise AttributeError('transformers version mismatch')\n")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "gla" / "__init__.py").write_text("def chunk_gla(**kw):\n    return 'kernel'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for key in [k for k in sys.modules if k == "fla" or k.startswith("fla.")]:
        monkeypatch.delitem(sys.modules, key)
    try:
        assert _import("fla.ops.gla", "chunk_gla")() == "kernel"
        with pytest.raises(AnchorAbsent, match="not importable"):
            _import("fla.ops.nothing_here", "chunk_x")
    finally:
        for key in [k for k in sys.modules if k == "fla" or k.startswith("fla.")]:
            del sys.modules[key]


# -- packed batches (the `varlen` part) ----------------------------------------------------------
def test_packed_case_checks_per_document_and_cuts_the_prefix(tmp_path):
    """A packed case passes cu_seqlens to ours and to the reference; its T prefix cuts the documents."""
    shape = Shape(B=1, T=40, H=2, K=8, V=8)
    case = op_case("mamba2", shape, torch.float32, strategies=("sequential",), anchor_kind=None, docs=5)
    inputs = case.make_inputs(0, torch.device("cpu"))
    cu = inputs.cu.tolist()
    assert cu[0] == 0 and cu[-1] == 40 and len(cu) == 6 and all(b > a for a, b in zip(cu, cu[1:]))
    assert inputs.sliced(7).cu.max().item() == 7
    payload = run_part("unit", [case], tmp_path / "v.json", device="cpu", ceilings=CEIL, timer=fake_timer(),
                       env=_env(), log=lambda s: None, check_T=23)  # fmt: skip
    assert {r["status"] for r in payload["records"]} == {"ok"}
    with pytest.raises(ValueError, match="docs: a packed batch needs B == 1"):
        op_case("mamba2", Shape(2, 40, 2, 8, 8), torch.float32, anchor_kind=None, docs=5)


# -- noise and run-to-run comparison -------------------------------------------------------------
def test_noise_is_recorded_rendered_and_compared(tmp_path):
    """A timer's (median, noise) lands in the record and the table; `compare` calls a ratio that
    moved less than the summed noises a repeat, and one that moved more an outlier."""
    from scandsl.bench._compare import compare_markdown, compare_runs

    case = op_case("mamba2", TINY, torch.float32, strategies=("reference",), anchor_kind=None, modes=("fwd",))
    payload = run_part("unit", [case], tmp_path / "n.json", device="cpu", ceilings=CEIL,
                       timer=lambda fn, g: (fn(), (0.5, 0.02))[1], env=_env(), log=lambda s: None)  # fmt: skip
    (rec,) = payload["records"]
    assert rec["ms"] == 0.5 and rec["noise"] == 0.02
    assert "0.500 ±2%" in render_markdown([payload])

    def run(ours_ms, anchor_ms, noise):
        return {"records": [
            _rec("gla", "ours.chunk", "ours", "fwd", "ok", ours_ms, noise=noise),
            _rec("gla", "fla.chunk_gla", "anchor", "fwd", "ok", anchor_ms, noise=noise),
            _rec("gla", "fla.chunk_gla", "anchor", "fwd_bwd", "ok", 2.0, noise=noise),
        ]}  # fmt: skip

    (same,) = compare_runs(run(0.50, 1.00, 0.01), run(0.51, 1.00, 0.01))  # +2% against ±4%
    assert same["anchor"] == "fla.chunk_gla" and abs(same["ratio_change"] - 0.02) < 1e-9
    assert abs(same["ratio_noise"] - 0.04) < 1e-12 and "repeats" in compare_markdown([same])
    (moved,) = compare_runs(run(0.50, 1.00, 0.01), run(0.60, 1.00, 0.01))  # +20%
    assert "outside the noise" in compare_markdown([moved])


def test_runs_of_different_code_are_told_apart(tmp_path):
    """Each run records a fingerprint of the library's sources; `compare` warns when two differ."""
    from scandsl.bench._compare import code_changed
    from scandsl.bench._run import code_fingerprint, environment

    fp = code_fingerprint()
    assert len(fp) == 16 and fp == code_fingerprint() and environment(torch.device("cpu"))["code"] == fp
    same, other, old = {"env": {"code": fp}}, {"env": {"code": "0" * 16}}, {"env": {}}
    assert code_changed(same, same) is None and code_changed(old, same) is None
    assert "different code" in (code_changed(same, other) or "")


def test_a_device_fault_skips_the_rest_of_the_part(tmp_path):
    """After a kernel breaks the CUDA context every later launch fails: the part records the
    fault, skips its remaining cases with the reason, and keeps what was measured before."""
    from types import SimpleNamespace

    sig = TAXONOMY_SIGS["scalar"]

    def run(sig_, x, cfg):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    broken = SimpleNamespace(run=run)
    shape = Shape(1, 8, 1, 4, 4)
    cases = [
        core_case(sig, shape, torch.float32, strategies=("fake",), loader=lambda s: broken, name="faults"),
        core_case(sig, shape, torch.float32, strategies=("fake",), loader=lambda s: broken, name="after"),
    ]
    payload = run_part("unit", cases, tmp_path / "f.json", device="cpu", ceilings=CEIL, timer=fake_timer(),
                       env=_env(), log=lambda s: None)  # fmt: skip
    assert payload["device_fault"].startswith("faults (ours.fake")
    after = [r for r in payload["records"] if r["case"] == "after"]
    assert [r["status"] for r in after] == ["skipped"] and "CUDA context is lost" in after[0]["reason"]
    assert json.loads((tmp_path / "f.json").read_text())["device_fault"] == payload["device_fault"]


def test_graph_timing_falls_back_to_eager_and_both_render(tmp_path, monkeypatch):
    """Graph replays give ``ms``, do_bench ``eager_ms``; a call that cannot be captured is timed
    eagerly and the table says why."""
    import scandsl.bench._harness as harness

    monkeypatch.setattr(harness, "do_bench_ms", lambda fn, g: (fn(), (0.9, 0.3))[1])
    monkeypatch.setattr(harness, "graph_ms", lambda fn, g: (fn(), (0.4, 0.01))[1])
    assert harness.graph_and_eager_ms(lambda: None, []) == {
        "ms": 0.4, "noise": 0.01, "timing": "graph", "eager_ms": 0.9, "eager_noise": 0.3
    }  # fmt: skip

    def no_capture(fn, g):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(harness, "graph_ms", no_capture)
    monkeypatch.setattr(harness.torch.cuda, "synchronize", lambda *a: None)
    got = harness.graph_and_eager_ms(lambda: None, [])
    assert got["ms"] == 0.9 and got["timing"] == "eager" and "capturing" in got["graph_error"]

    case = op_case("mamba2", TINY, torch.float32, strategies=("reference",), anchor_kind=None, modes=("fwd",))
    payload = run_part("unit", [case], tmp_path / "g.json", device="cpu", ceilings=CEIL,
                       timer=harness.graph_and_eager_ms, env=_env(), log=lambda s: None)  # fmt: skip
    md = render_markdown([payload])
    assert "eager fwd / fwd+bwd ms" in md and "(eager only)" in md and "graph capture failed" in md
