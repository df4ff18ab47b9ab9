"""Cache keys, the JSON cache's robustness rules, the heuristic and choose()'s cost."""

from __future__ import annotations

import json
import time
import warnings

import pytest
import torch
from autotune_fakes import chunk_like, loader_for, scan_like, sequential_like
from scandsl.autotune import (
    CacheEntry,
    CacheWarning,
    TuneCache,
    cache_at,
    choose,
    forget_choices,
    heuristic,
    make_key,
    shape_bucket,
)
from scandsl.autotune._cache import CACHE_NAME, FORMAT

from scandsl._core import Shape
from scandsl.testing import TAXONOMY_SIGS

SIG = TAXONOMY_SIGS["scalar"]
LEGAL = ("sequential", "scan", "chunk")
SHAPE = Shape(B=4, T=4096, H=16, K=128, V=128)
LOADER = loader_for(chunk_like(), sequential_like(), scan_like())


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SCANDSL_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SCANDSL_TUNE", raising=False)
    forget_choices()
    yield
    forget_choices()


def _entry(strategy="chunk", ms=0.5, **cfg) -> CacheEntry:
    return CacheEntry(strategy=strategy, config=cfg or {"BT": 64}, ms=ms)


# -- keys ------------------------------------------------------------------------------------
def test_key_buckets_and_fields():
    assert shape_bucket(Shape(B=4, T=3000, H=16, K=96, V=40)) == (64, 4096, 96, 40)
    assert shape_bucket(Shape(B=1, T=1, H=1, K=16, V=16)) == (1, 1, 16, 16)
    k1 = make_key("spec", SIG, Shape(4, 3000, 16, 128, 128), torch.bfloat16, "cpu")
    k2 = make_key("spec", SIG, Shape(4, 4096, 16, 128, 128), torch.bfloat16, "cpu")
    assert k1 == k2 and str(k1) == str(k2)  # same bucket
    others = [
        make_key("spec", SIG, Shape(4, 4097, 16, 128, 128), torch.bfloat16, "cpu"),  # next T bucket
        make_key("spec", SIG, Shape(4, 4096, 16, 64, 128), torch.bfloat16, "cpu"),  # K exact
        make_key("spec", SIG, Shape(4, 4096, 16, 128, 128), torch.float16, "cpu"),  # dtype
        make_key("other", SIG, Shape(4, 4096, 16, 128, 128), torch.bfloat16, "cpu"),  # spec
        make_key("spec", TAXONOMY_SIGS["key"], Shape(4, 4096, 16, 128, 128), torch.bfloat16, "cpu"),  # stage
    ]
    assert len({str(k) for k in [k1, *others]}) == 6
    f = k1.fields()
    assert f["device"] == "cpu" and f["dtype"] == "bf16" and f["T"] == 4096 and f["triton"] and f["scandsl"]


# -- round trip and robustness ---------------------------------------------------------------
def test_round_trip_and_merge(tmp_path):
    a = TuneCache(tmp_path / CACHE_NAME)
    a.put("k1", _entry(ms=0.5))
    b = TuneCache(tmp_path / CACHE_NAME)  # another process's view, loaded before the next write
    assert b.get("k1").config == {"BT": 64}
    b.put("k2", _entry("scan", 0.7, BT=32))
    a.put("k3", _entry("sequential", 0.9, BV=16))  # a re-reads under the lock: k2 survives
    fresh = TuneCache(tmp_path / CACHE_NAME)
    assert set(fresh.entries()) == {"k1", "k2", "k3"}
    # on a clash the faster measurement wins, whoever writes last
    a.put("k1", _entry(ms=0.8, BT=16))
    assert TuneCache(tmp_path / CACHE_NAME).get("k1").ms == 0.5
    data = json.loads((tmp_path / CACHE_NAME).read_text())
    assert data["format"] == FORMAT and set(data["entries"]) == {"k1", "k2", "k3"}
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave nothing behind


@pytest.mark.parametrize(
    "content, status",
    [
        ("{ not json", "corrupt"),
        ('{"format": 1, "scandsl": "0.1.0", "entries": {"k": {"strategy": 3}}}', "corrupt"),
        ("[1, 2, 3]", "corrupt"),
        ('{"format": 999, "scandsl": "0.1.0", "entries": {}}', "stale"),
        ('{"format": 1, "scandsl": "0.0.1-old", "entries": {"k": {"strategy": "chunk", "config": {}, "ms": 1}}}',
         "stale"),
    ],
)  # fmt: skip
def test_corrupt_or_stale_cache_is_warned_ignored_and_backed_up(tmp_path, content, status):
    path = tmp_path / CACHE_NAME
    path.write_text(content)
    with pytest.warns(CacheWarning, match=status):
        assert choose("spec", SIG, SHAPE, torch.bfloat16, LEGAL, loader=LOADER) == ("chunk", None)
    assert path.read_text() == content  # reading never rewrites
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        TuneCache(path).put("fresh", _entry())
    backups = list(tmp_path.glob(f"{CACHE_NAME}.{status}-*"))
    assert len(backups) == 1 and backups[0].read_text() == content
    assert set(json.loads(path.read_text())["entries"]) == {"fresh"}


def test_partly_damaged_cache_keeps_valid_entries(tmp_path):
    import scandsl

    good = {"strategy": "scan", "config": {"BT": 32}, "ms": 0.3}
    data = {"format": FORMAT, "scandsl": scandsl.__version__, "entries": {"good": good, "bad": {"ms": -1}}}
    (tmp_path / CACHE_NAME).write_text(json.dumps(data))
    with pytest.warns(CacheWarning, match="1 malformed"):
        assert TuneCache(tmp_path / CACHE_NAME).get("good").strategy == "scan"


# -- choose() ----------------------------------------------------------------------------------
def test_heuristic_preferences():
    assert heuristic(SIG, SHAPE, LEGAL, LOADER) == "chunk"
    assert heuristic(SIG, Shape(4, 1, 16, 128, 128), LEGAL, LOADER) == "sequential"  # decode
    assert heuristic(SIG, SHAPE, ("sequential", "scan"), LOADER) == "scan"
    chan = TAXONOMY_SIGS["channel"]
    assert heuristic(chan, Shape(4, 4096, 16, 16, 128), ("sequential", "scan"), LOADER) == "scan"
    only_seq = loader_for(sequential_like())
    assert heuristic(SIG, SHAPE, LEGAL, only_seq) == "sequential"  # chunk/scan not built
    with pytest.raises(ValueError, match="strategy='reference'"):
        heuristic(SIG, SHAPE, ("chunk",), only_seq)


def test_choose_reads_cache_and_ignores_illegal_or_unbuilt(tmp_path):
    key = str(make_key("spec", SIG, SHAPE, torch.bfloat16))
    cache_at(tmp_path).put(key, _entry("scan", 0.4, BT=32))
    forget_choices()
    assert choose("spec", SIG, SHAPE, torch.bfloat16, LEGAL, loader=LOADER) == ("scan", {"BT": 32})
    # a cached strategy that is not legal for the caller is not used
    assert choose("spec", SIG, SHAPE, torch.bfloat16, ("chunk", "sequential"), loader=LOADER) == (
        "chunk",
        None,
    )
    # nor one that is not built here
    assert choose("spec", SIG, SHAPE, torch.bfloat16, LEGAL, loader=loader_for(chunk_like())) == (
        "chunk",
        None,
    )


def test_choose_never_imports_optuna_or_tunes_without_knob(tmp_path, monkeypatch):
    import scandsl.autotune._tune as tmod

    monkeypatch.setattr(tmod, "tune", lambda *a, **k: pytest.fail("tuned without SCANDSL_TUNE=1"))
    assert choose("spec", SIG, SHAPE, torch.float32, LEGAL, loader=LOADER)[1] is None


def test_choose_overhead_is_microseconds(capsys):
    choose("spec", SIG, SHAPE, torch.bfloat16, LEGAL, loader=LOADER)  # first call: loads the cache
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        choose("spec", SIG, SHAPE, torch.bfloat16, LEGAL, loader=LOADER)
    per_call_us = (time.perf_counter() - t0) / n * 1e6
    with capsys.disabled():
        print(f"\nchoose() hot path: {per_call_us:.2f} us/call")
    assert per_call_us < 1000  # the contract; in practice a few microseconds
    assert per_call_us < 50
