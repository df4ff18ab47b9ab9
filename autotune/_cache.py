"""The readable tuning cache: one JSON file of winners, read once per process.

``<cache_dir>/autotune-cache.json``::

    {"format": 1, "scandsl": "0.1.0",
     "entries": {"<TuneKey>": {"strategy": "chunk", "config": {"BT": 64, ...}, "ms": 0.51, ...}}}

JSON, never pickle: a person can read, diff and delete an entry, and loading a file
never runs code. The Optuna journal beside it keeps every trial; this file keeps only
what the hot path needs.

Robustness rules (a cache must never break a program that would run without it):

- a file that does not parse, or whose entries are malformed, is *corrupt*; one written
  by another cache format or scandsl version is *stale*. Either is reported once with a
  :class:`CacheWarning` and ignored (its valid entries still serve when only some are bad);
- before such a file is replaced, it is copied to ``<name>.corrupt-<timestamp>`` (or
  ``.stale-<timestamp>``), so nothing is lost silently;
- writes take a file lock, re-read the file under it and merge (so concurrent tuners
  never drop each other's entries), then write a temporary file and rename it over the
  old one (readers never see half a file).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

__all__ = ["FORMAT", "CACHE_NAME", "CacheWarning", "CacheEntry", "TuneCache", "cache_at"]

FORMAT = 1
CACHE_NAME = "autotune-cache.json"


class CacheWarning(UserWarning):
    """A tuning cache file was corrupt or stale and is being ignored."""


@dataclass(slots=True)
class CacheEntry:
    """A tuned winner for one key, plus what it was measured against."""

    strategy: str
    config: dict[str, Any]
    ms: float
    default_ms: float | None = None  # the heuristic default's time on the same inputs
    worst_ms: float | None = None
    trials: int = 0
    evaluations: int = 0  # distinct configs compiled, checked and timed
    tuned_at: str = ""
    key: dict[str, Any] = field(default_factory=dict)  # the TuneKey's fields, for readers

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> CacheEntry:
        """Parse one entry; raises ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"entry is a {type(data).__name__}, expected an object")
        strategy, config, ms = data.get("strategy"), data.get("config"), data.get("ms")
        if not isinstance(strategy, str):
            raise ValueError(f"'strategy' must be a string, got {strategy!r}")
        if not isinstance(config, dict):
            raise ValueError(f"'config' must be an object, got {config!r}")
        if not isinstance(ms, (int, float)) or isinstance(ms, bool) or not math.isfinite(ms) or ms <= 0:
            raise ValueError(f"'ms' must be a positive number, got {ms!r}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(slots=True)
class _Loaded:
    entries: dict[str, CacheEntry]
    status: str  # "ok" | "missing" | "corrupt" | "stale"
    reason: str = ""


def _read(path: Path, version: str) -> _Loaded:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return _Loaded({}, "missing")
    except OSError as err:
        return _Loaded({}, "corrupt", f"cannot read: {err}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return _Loaded({}, "corrupt", f"not valid JSON ({err})")
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        return _Loaded({}, "corrupt", "expected an object with an 'entries' object")
    if data.get("format") != FORMAT:
        return _Loaded({}, "stale", f"cache format {data.get('format')!r}, this scandsl reads {FORMAT}")
    if data.get("scandsl") != version:
        return _Loaded({}, "stale", f"written by scandsl {data.get('scandsl')!r}, this is {version}")
    entries, bad = {}, []
    for key, raw in data["entries"].items():
        try:
            entries[key] = CacheEntry.from_json(raw)
        except (ValueError, TypeError) as err:
            bad.append(f"{key}: {err}")
    if bad:
        return _Loaded(entries, "corrupt", f"{len(bad)} malformed entries, first: {bad[0]}")
    return _Loaded(entries, "ok")


class TuneCache:
    """The JSON cache file at ``path``; entries are loaded on first use and kept in memory."""

    def __init__(self, path: Path, *, version: str | None = None) -> None:
        import scandsl

        self.path = Path(path)
        self.version = version or scandsl.__version__
        self._entries: dict[str, CacheEntry] | None = None
        self._warned: set[tuple[str, str]] = set()
        self._mutex = threading.Lock()

    # -- reading ---------------------------------------------------------------------------
    def entries(self) -> dict[str, CacheEntry]:
        entries = self._entries
        if entries is None:
            with self._mutex:
                if self._entries is None:
                    self._entries = self._load().entries
                entries = self._entries
        return entries

    def get(self, key: str) -> CacheEntry | None:
        return self.entries().get(key)

    def reload(self) -> None:
        """Forget the in-memory copy (the next lookup re-reads the file)."""
        with self._mutex:
            self._entries = None

    def _load(self) -> _Loaded:
        loaded = _read(self.path, self.version)
        if loaded.status in ("corrupt", "stale"):
            self._warn(loaded)
        return loaded

    def _warn(self, loaded: _Loaded) -> None:
        tag = (loaded.status, loaded.reason)
        if tag in self._warned:
            return
        self._warned.add(tag)
        kept = f" ({len(loaded.entries)} valid entries still used)" if loaded.entries else ""
        warnings.warn(
            f"scandsl autotune cache {self.path} is {loaded.status}: {loaded.reason}; ignoring it{kept}. "
            "It is backed up before the next tuning result replaces it; delete it to silence this.",
            CacheWarning,
            stacklevel=4,
        )

    # -- writing ---------------------------------------------------------------------------
    def put(self, key: str, entry: CacheEntry) -> CacheEntry:
        """Record ``entry`` under ``key`` (merging with concurrent writers); returns the kept entry.

        On a clash the faster measurement wins: both were checked and timed on this key.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock", timeout=120):
            disk = _read(self.path, self.version)
            if disk.status in ("corrupt", "stale"):
                self._warn(disk)
                self._backup(disk.status)
            merged = dict(disk.entries)
            old = merged.get(key)
            kept = entry if old is None or entry.ms <= old.ms else old
            merged[key] = kept
            self._write(merged)
        with self._mutex:
            self._entries = merged
        return kept

    def _backup(self, status: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"{time.time() % 1:.6f}"[1:]
        target = self.path.with_name(f"{self.path.name}.{status}-{stamp}")
        shutil.copy2(self.path, target)
        return target

    def _write(self, entries: dict[str, CacheEntry]) -> None:
        payload = {
            "format": FORMAT,
            "scandsl": self.version,
            "entries": {k: entries[k].to_json() for k in sorted(entries)},
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(payload, fh, indent=1, sort_keys=False)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


_CACHES: dict[str, TuneCache] = {}
_CACHES_LOCK = threading.Lock()


def cache_at(directory: Path) -> TuneCache:
    """The process-wide cache object for ``directory`` (one per folder, so memory stays shared)."""
    key = str(directory)
    cache = _CACHES.get(key)
    if cache is None:
        with _CACHES_LOCK:
            cache = _CACHES.setdefault(key, TuneCache(Path(directory) / CACHE_NAME))
    return cache
