"""Tuning against fake strategies: gates, failures as trials, grid, samplers, shared journals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("optuna")

from autotune_fakes import TINY, chunk_like, loader_for, scan_like, sequential_like, synthetic_timer  # noqa: E402
from scandsl.autotune import choose, forget_choices, grid_search, replay, tune  # noqa: E402

from scandsl._core import Shape  # noqa: E402
from scandsl.testing import TAXONOMY_SIGS  # noqa: E402

SIG = TAXONOMY_SIGS["scalar"]
LEGAL = ("sequential", "scan", "chunk")
HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SCANDSL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SCANDSL_TUNE", raising=False)
    forget_choices()
    yield
    forget_choices()


def _fakes(**chunk_kw):
    mods = {m.name: m for m in (chunk_like(**chunk_kw), sequential_like(), scan_like())}
    return mods, loader_for(*mods.values()), synthetic_timer(mods)


def test_space_validity_and_grid():
    mods, _, _ = _fakes()
    space = mods["chunk"].search_space(SIG, TINY)
    grid = space.grid()
    assert len(grid) == 4 * 4 * 4 * 3 - 4 * 3  # BK*BV > 64*128 is invalid: (128,128) x BT x warps
    assert all(space.valid(c) is None for c in grid)
    assert "register budget" in space.valid({"BT": 16, "BK": 128, "BV": 128, "num_warps": 2})


def test_wrong_fast_config_is_rejected_and_failures_are_trials(tmp_path):
    # the fastest corner of the space computes the wrong answer; another region crashes
    mods, loader, timer = _fakes(
        cost=lambda cfg: 0.1 if cfg["BT"] == 128 else 1.0 + cfg["BK"] / 128 + cfg["num_warps"] / 80,
        wrong=lambda cfg: cfg["BT"] == 128,
        crash=lambda cfg: cfg["BT"] == 16,
    )
    res = grid_search("fake", SIG, TINY, torch.float32, LEGAL, timer=timer, loader=loader, progress=False)
    states = res.counts()
    assert states["wrong"] == 4 * 4 * 3 - 3  # every BT=128 config, minus the invalid ones
    assert states["error"] == 4 * 4 * 3 - 3
    assert res.best is not None and res.best.config["BT"] != 128
    wrong = next(r for r in res.records if r.state == "wrong")
    assert "relative error" in wrong.reason and wrong.err > 1e-2
    err = next(r for r in res.records if r.state == "error")
    assert "OutOfResources" in err.reason

    tuned = tune("fake", SIG, TINY, torch.float32, LEGAL, make_inputs=None, trials=30, timer=timer,
                 loader=loader, progress=False, seed=0, storage=tmp_path / "j.log")  # fmt: skip
    assert tuned.best.config.get("BT") != 128 and tuned.best.ok
    import optuna

    study = optuna.load_study(study_name=tuned.study_name, storage=tuned_storage(tmp_path / "j.log"))
    by_state = {t.state.name for t in study.trials}
    assert "COMPLETE" in by_state
    for t in study.trials:  # every non-success carries its reason
        if t.state.name in ("FAIL", "PRUNED"):
            assert t.user_attrs["state"] in ("error", "wrong", "invalid") and t.user_attrs["reason"]


def tuned_storage(path):
    from scandsl.autotune._tune import open_storage

    return open_storage(path, path.parent)


def test_invalid_configs_are_pruned_with_reason(tmp_path):
    mods, loader, timer = _fakes(
        cost=lambda cfg: 1.0 / (cfg["BK"] * cfg["BV"])
    )  # pulls toward invalid corner
    res = tune("fake", SIG, TINY, torch.float32, ("chunk",), make_inputs=None, trials=25, timer=timer,
               loader=loader, progress=False, seed=1, storage=tmp_path / "j.log")  # fmt: skip
    invalid = [r for r in res.records if r.state == "invalid"]
    assert invalid and all("register budget" in r.reason for r in invalid)
    assert res.best.config["BK"] * res.best.config["BV"] <= 64 * 128


def test_tune_writes_cache_and_choose_uses_it(tmp_path):
    mods, loader, timer = _fakes()
    shape = Shape(B=2, T=3000, H=4, K=16, V=16)
    before = choose("fake", SIG, shape, torch.bfloat16, LEGAL, loader=loader)
    assert before == ("chunk", None)  # heuristic: long T, matrix state
    res = tune("fake", SIG, TINY, torch.bfloat16, LEGAL, make_inputs=None, trials=20, timer=timer,
               loader=loader, progress=False, seed=0)  # fmt: skip
    # the default (chunk, its default_config) was measured and is never beaten by a worse winner
    assert res.default is not None and res.default.ok and res.best.ms <= res.default.ms
    hit = choose("fake", SIG, TINY, torch.bfloat16, LEGAL, loader=loader)
    assert hit == (res.best.strategy, res.best.config)
    data = json.loads((tmp_path / "cache" / "autotune-cache.json").read_text())
    (entry,) = data["entries"].values()
    assert entry["strategy"] == res.best.strategy and entry["default_ms"] == res.default.ms
    assert entry["key"]["dtype"] == "bf16" and entry["key"]["T"] == 32


def test_optuna_reaches_grid_best_with_a_quarter_of_the_trials():
    mods, loader, timer = _fakes()
    grid = grid_search("fake", SIG, TINY, torch.float32, LEGAL, timer=timer, loader=loader, progress=False)
    n_grid = len(grid.records)
    best = grid.best.ms
    budget = n_grid // 4 - 1  # the default is measured on top: 25% of the grid in all
    tpe_hits = random_hits = 0
    for seed in range(3):
        res = replay(grid, sampler="tpe", trials=budget, seed=seed)
        assert res.evaluations <= n_grid // 4
        tpe_hits += res.best.ms <= best * 1.03
        random_hits += replay(grid, sampler="random", trials=budget, seed=seed).best.ms <= best * 1.03
    assert tpe_hits == 3, "TPE should land within 3% of the grid best with a quarter of its trials"
    assert tpe_hits >= random_hits


def test_replay_other_samplers_run():
    mods, loader, timer = _fakes()
    grid = grid_search(
        "fake", SIG, TINY, torch.float32, ("chunk",), timer=timer, loader=loader, progress=False
    )
    res = replay(grid, sampler="random", trials=20, seed=0)
    assert res.best is not None and len(res.records) >= 20


def test_tune_on_miss_knob(monkeypatch):
    mods, loader, timer = _fakes()
    monkeypatch.setenv("SCANDSL_TUNE", "1")
    import scandsl.autotune._tune as tmod

    calls = []
    real = tmod.tune

    def spy(*a, **kw):
        calls.append(kw)
        kw["timer"] = timer
        kw["trials"] = 5
        return real(*a, **kw)

    monkeypatch.setattr(tmod, "tune", spy)
    strategy, config = choose("fake", SIG, TINY, torch.float32, LEGAL, loader=loader)
    assert calls and config is not None and strategy in LEGAL


def test_two_processes_share_one_journal_study(tmp_path):
    journal = tmp_path / "shared.journal"
    cache = tmp_path / "shared-cache"
    env = dict(
        os.environ,
        SCANDSL_CACHE_DIR=str(cache),
        PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    worker = HERE / "autotune_worker.py"
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(journal), str(seed), "10"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for seed in (1, 2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    import optuna

    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert summaries[0]["study"] == summaries[1]["study"]
    study = optuna.load_study(study_name=summaries[0]["study"], storage=tuned_storage(journal))
    workers = {t.user_attrs.get("worker") for t in study.trials}
    assert len(workers) == 2, workers  # both processes' trials are in the one study
    fresh: dict[str, int] = {}
    for t in study.trials:
        a = t.user_attrs
        if not (a.get("default") or a.get("reused") or a["state"] == "invalid"):
            fresh[a["worker"]] = fresh.get(a["worker"], 0) + 1
    assert sorted(fresh.values()) == [10, 10]  # each spent its own budget; none re-ran the other's configs
    # both wrote their winner into the one cache file without losing the other's work
    data = json.loads((cache / "autotune-cache.json").read_text())
    assert set(data["entries"]) == {summaries[0]["key"], "extra-1", "extra-2"}


def test_forward_objective_fixes_backward_params():
    from autotune_fakes import make_fake
    from scandsl.autotune import Param

    fake = make_fake(
        "chunk",
        params=(Param("BT", (32, 64)), Param("bwd_BT", (16, 32, 64)), Param("num_warps_bwd", (2, 4))),
        cost=lambda cfg: cfg["BT"] / 64,
        default={"BT": 64, "bwd_BT": 32, "num_warps_bwd": 4, "extra": 1},
    )
    timer = synthetic_timer({"chunk": fake})
    fwd = grid_search(
        "f", SIG, TINY, torch.float32, ("chunk",), timer=timer, loader=loader_for(fake), progress=False
    )
    assert [r.config for r in fwd.records] == [
        {"bwd_BT": 32, "num_warps_bwd": 4, "extra": 1, "BT": 32},
        {"bwd_BT": 32, "num_warps_bwd": 4, "extra": 1, "BT": 64},
    ]
    both = grid_search("f", SIG, TINY, torch.float32, ("chunk",), timer=timer, loader=loader_for(fake),
                       progress=False, objective="fwd_bwd")  # fmt: skip
    assert len(both.records) == 2 * 3 * 2
    res = tune("f", SIG, TINY, torch.float32, ("chunk",), make_inputs=None, trials=5, timer=timer,
               loader=loader_for(fake), progress=False, seed=0)  # fmt: skip
    assert res.best.config == {"bwd_BT": 32, "num_warps_bwd": 4, "extra": 1, "BT": 32}
    assert any(r.extra.get("default") for r in res.records)  # the default entered the study as a trial


def test_grid_budget_json_round_trip_and_sampler_study(tmp_path):
    from scandsl.autotune._json import result_from_json, result_to_json
    from scandsl.bench.tune_study import main as study_main

    mods, loader, timer = _fakes()
    stopped = grid_search("fake", SIG, TINY, torch.float32, LEGAL, timer=timer, loader=loader, progress=False,
                          budget_s=0.0, shuffle_seed=0)  # fmt: skip
    assert stopped.meta == {"complete": False, "grid_size": 193} and not stopped.records
    grid = grid_search("fake", SIG, TINY, torch.float32, LEGAL, timer=timer, loader=loader, progress=False,
                       shuffle_seed=0)  # fmt: skip
    back = result_from_json(json.loads(json.dumps(result_to_json(grid))))
    assert back.best.ms == grid.best.ms and back.key == grid.key and len(back.records) == 193
    # where a walk's time goes, per config: the correctness check and the timing
    assert all(r.extra["check_s"] >= 0 and r.extra["time_s"] >= 0 for r in back.records if r.ok)
    path = tmp_path / "tune_study.json"
    path.write_text(json.dumps({"grid": result_to_json(grid)}))
    assert study_main(["replay", str(path), "--samplers", "tpe,random", "--seeds", "2",
                       "--plot", str(tmp_path / "s.png")]) == 0  # fmt: skip


def test_a_device_fault_stops_the_search_and_is_never_rerun(tmp_path):
    """An illegal memory access loses the CUDA context: every later launch in the process would
    fail. The grid stops with the reason; tune raises DeviceFault after recording the culprit as
    failed, and a resumed search (new process, same journal) does not run it again."""
    from scandsl.autotune import DeviceFault

    culprit = {"BT": 32, "BK": 32, "BV": 16, "num_warps": 8}
    mods, loader, timer = _fakes(fault=lambda cfg: cfg == culprit)
    grid = grid_search("fake", SIG, TINY, torch.float32, ("chunk",), timer=timer, loader=loader,
                       progress=False, shuffle_seed=3)  # fmt: skip
    assert not grid.meta["complete"] and "faulted the GPU" in grid.meta["device_fault"]
    last = grid.records[-1]
    assert last.config == culprit and last.state == "error" and "illegal memory access" in last.reason
    assert all(r.config != culprit for r in grid.records[:-1]) and len(grid.records) < grid.meta["grid_size"]

    journal = tmp_path / "j.log"
    kw = dict(make_inputs=None, timer=timer, loader=loader, progress=False, storage=journal, sampler="random")
    # a random sampler proposes the culprit sooner or later
    for seed in range(20):
        try:
            tune("fake", SIG, TINY, torch.float32, ("chunk",), trials=200, seed=seed, **kw)
        except DeviceFault as fault:
            assert fault.record.config == culprit and "new process" in str(fault)
            # what was measured before the fault travels with it (the CLI writes it to --json)
            assert any(r.config == culprit for r in fault.records)
            assert all(r.state in ("ok", "invalid", "error", "wrong") for r in fault.records)
            break
    else:
        pytest.fail("the culprit was never proposed")
    calls = mods["chunk"].calls["run"]
    resumed = tune("fake", SIG, TINY, torch.float32, ("chunk",), trials=300, seed=99, **kw)
    failed = [r for r in resumed.records if r.config == culprit]
    assert failed and all(r.state == "error" for r in failed)  # kept, not rerun
    assert resumed.best.ok and mods["chunk"].calls["run"] > calls


def test_fix_pins_parameters_for_grid_and_search(tmp_path):
    """``fix`` takes parameters out of the searched space (grid and Optuna alike) at the pinned
    value, so a study over a large space can walk a complete grid of the rest."""
    mods, loader, timer = _fakes()
    full = grid_search(
        "fake", SIG, TINY, torch.float32, ("chunk",), timer=timer, loader=loader, progress=False
    )
    pinned = grid_search("fake", SIG, TINY, torch.float32, ("chunk",), timer=timer, loader=loader, progress=False,
                         fix={"num_warps": 4, "BT": 32})  # fmt: skip
    assert pinned.meta["grid_size"] * 12 == full.meta["grid_size"]  # 4 BT x 3 warps pinned to one
    assert all(r.config["num_warps"] == 4 and r.config["BT"] == 32 for r in pinned.records)
    tuned = tune("fake", SIG, TINY, torch.float32, ("chunk",), make_inputs=None, trials=6, timer=timer, loader=loader,
                 progress=False, seed=0, storage=tmp_path / "j.log", fix={"num_warps": 4})  # fmt: skip
    assert "|fix:" in tuned.study_name
    assert all(r.config["num_warps"] == 4 for r in tuned.records if not r.extra.get("default"))
    with pytest.raises(ValueError, match="fix: chunk.num_warps=3 is not one of its choices"):
        grid_search("fake", SIG, TINY, torch.float32, ("chunk",), timer=timer, loader=loader, progress=False,
                    fix={"num_warps": 3})  # fmt: skip
    with pytest.raises(ValueError, match=r"no strategy of \['chunk'\] has the parameter\(s\) \['num_warp'\]"):
        grid_search("fake", SIG, TINY, torch.float32, ("chunk",), timer=timer, loader=loader, progress=False,
                    fix={"num_warp": 4})  # fmt: skip


def test_cli_writes_what_was_measured_before_a_device_fault(tmp_path, monkeypatch, capsys):
    """``scandsl tune --json`` after a device fault: the records measured before it are written
    (the journal may live on a machine that is about to be handed back), and the exit code is 1."""
    from scandsl.autotune import DeviceFault, _cli, _tune
    from scandsl.autotune._evaluate import TrialRecord

    measured = TrialRecord("chunk", {"BT": 16}, "ok", ms=1.5)
    culprit = TrialRecord("chunk", {"BT": 32}, "error", reason="illegal memory access")

    def faulting_tune(*args, **kwargs):
        fault = DeviceFault(culprit)
        fault.records = [measured, culprit]
        raise fault

    monkeypatch.setattr(_tune, "tune", faulting_tune)
    out = tmp_path / "trials.json"
    status = _cli.tune_main(["core:channel", "--shape", "1,8,1,4,4", "--no-progress", "--json", str(out)])
    assert status == 1 and "faulted the GPU" in capsys.readouterr().err
    (stage,) = json.loads(out.read_text())
    assert stage["stage"] == 0 and "faulted the GPU" in stage["device_fault"]
    assert [r["state"] for r in stage["records"]] == ["ok", "error"] and stage["records"][0]["ms"] == 1.5
