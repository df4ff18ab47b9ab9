"""The grid's parallel pre-compile pass: each valid config runs once in a worker, and nothing
a worker does (raising, dying, never starting) changes what the grid measures."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("optuna")

import precompile_fakes as pf  # noqa: E402
from autotune_fakes import loader_for, synthetic_timer  # noqa: E402
from scandsl.autotune import _precompile, forget_choices, grid_search  # noqa: E402

from scandsl._core import Shape  # noqa: E402
from scandsl.testing import TAXONOMY_SIGS  # noqa: E402

SIG = TAXONOMY_SIGS["scalar"]
LEGAL = ("sequential", "chunk")
SHAPE = Shape(B=3, T=40, H=1, K=16, V=16)  # the probe has B=2: the logged B=3 says "timing shape"
FIX = {"BT": 32, "num_warps": 4}  # chunk: 15 configs (BK x BV, less the invalid corner), sequential: 3


@pytest.fixture(autouse=True)
def _setup(tmp_path, monkeypatch):
    monkeypatch.setenv("SCANDSL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(pf.LOG, str(tmp_path / "runs.jsonl"))
    monkeypatch.delenv(pf.DIE, raising=False)
    monkeypatch.setattr(_precompile, "COMPILED_ON", ("cuda", "cpu"))  # the interpreter compiles nothing
    forget_choices()
    yield
    forget_choices()


def _grid(**kw):
    return grid_search("fake", SIG, SHAPE, torch.float32, LEGAL, timer=pf.TIMER, loader=pf.loader, progress=False,
                       fix=FIX, shuffle_seed=0, device="cpu", **kw)  # fmt: skip


def _ids(strategy, config):
    return json.dumps([strategy, config], sort_keys=True)


def _outcomes(res):
    return [(r.strategy, r.config, r.state, r.ms) for r in res.records]


def test_each_valid_config_runs_once_in_a_worker_and_the_grid_is_unchanged():
    plain = _grid()
    assert not pf.worker_runs()
    res = _grid(compile_workers=2)
    runs = pf.worker_runs()
    configs = [(r.strategy, r.config) for r in res.records]
    assert sorted(_ids(r["strategy"], r["config"]) for r in runs) == sorted(_ids(*c) for c in configs)
    assert all(r["shape"] == [3, 40, 1, 16] for r in runs)
    assert res.meta["precompiled"] == res.meta["grid_size"] == 18 and res.meta["precompile_s"] > 0
    assert "precompile_note" not in res.meta
    # the config that raises in the worker too is recorded by the walk, as without workers
    assert ("chunk", pf.RAISES) in [(r.strategy, r.config) for r in res.records if r.state == "error"]
    assert _outcomes(res) == _outcomes(plain) and res.best.config == plain.best.config


def test_invalid_configs_are_not_handed_to_workers():
    from scandsl.autotune._evaluate import Evaluator

    ev = Evaluator(SIG, SHAPE, torch.float32, loader=pf.loader, device="cpu")
    ok = {"BT": 64, "BK": 64, "BV": 64, "num_warps": 4}
    too_big = {"BT": 64, "BK": 128, "BV": 128, "num_warps": 4}  # exceeds the register budget
    meta = _precompile.precompile([("chunk", too_big), ("chunk", ok), ("nope", ok)], evaluator=ev, workers=2)
    assert [(r["strategy"], r["config"]) for r in pf.worker_runs()] == [("chunk", ok)]
    assert meta["precompiled"] == 1 and "precompile_note" not in meta


def test_a_dying_worker_ends_the_pass_not_the_grid(monkeypatch):
    plain = _grid()
    monkeypatch.setenv(pf.DIE, json.dumps({"BV": 32, "num_warps": 4}))  # a sequential config
    with pytest.warns(RuntimeWarning, match="pre-compile stopped after .* configs .*BrokenProcessPool"):
        res = _grid(compile_workers=2)
    assert (
        res.meta["precompiled"] < res.meta["grid_size"]
        and "walk compiles the rest" in res.meta["precompile_note"]
    )
    assert _outcomes(res) == _outcomes(plain) and res.meta["complete"]


def test_unpicklable_loader_skips_the_pass_with_a_note():
    timer = synthetic_timer(pf.MODS)
    with pytest.warns(RuntimeWarning, match="pre-compile skipped: the loader or make_inputs cannot be sent"):
        res = grid_search("fake", SIG, SHAPE, torch.float32, LEGAL, timer=timer, progress=False, fix=FIX,
                          loader=loader_for(*pf.MODS.values()), device="cpu", compile_workers=2)  # fmt: skip
    assert res.meta["precompiled"] == 0 and len(res.records) == 18 and not pf.worker_runs()


def test_a_spent_budget_hands_out_nothing():
    with pytest.warns(RuntimeWarning, match="pre-compile stopped at the time budget after 0 of 18"):
        res = _grid(compile_workers=2, budget_s=0.0)
    assert res.meta["precompiled"] == 0 and not res.meta["complete"] and not pf.worker_runs()


def test_only_compiled_devices_are_precompiled(monkeypatch):
    monkeypatch.setattr(_precompile, "COMPILED_ON", ("cuda",))
    with pytest.warns(RuntimeWarning, match="kernels on cpu are not compiled"):
        res = _grid(compile_workers=2)
    assert res.meta["precompiled"] == 0 and not pf.worker_runs()
