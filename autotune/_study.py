"""Optuna plumbing: samplers, storages, and the ask/tell loop over a conditional space.

The search space is conditional: a trial first picks a strategy among the legal, built
ones, then that strategy's own parameters (named ``<strategy>.<param>``). Each outcome is
told to Optuna as ``PRUNED`` (invalid config, user attr ``reason``), ``FAIL`` (compile /
launch error or wrong result: ``state`` ``error`` / ``wrong`` and the ``reason``) or
``COMPLETE`` with the median ms. User attrs ``strategy``, ``config``, ``state``, ``ms``,
``worker`` (host:pid) make every trial readable without this module.

A config already evaluated in the study — by this process or another one sharing the
storage — is not run again: its recorded outcome is told for the new trial (a repeated
failure as PRUNED, which TPE learns from; it ignores FAIL trials).
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._evaluate import DeviceFault, TrialRecord
from ._report import Progress

__all__ = [
    "JOURNAL_NAME",
    "FLAT_SAMPLERS",
    "make_sampler",
    "open_storage",
    "search",
    "record_from_trial",
    "config_id",
]

JOURNAL_NAME = "optuna-journal.log"
FLAT_SAMPLERS = ("gp", "cmaes", "qmc")  # want a fixed space: every strategy's params on every trial


def make_sampler(sampler: Any, *, seed: int | None, n_startup: int):
    import optuna

    if not isinstance(sampler, str):
        return sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if sampler == "tpe":
            return optuna.samplers.TPESampler(
                multivariate=True, group=True, n_startup_trials=n_startup, seed=seed, constant_liar=True
            )
        if sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup)
        if sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(
                seed=seed, n_startup_trials=n_startup, warn_independent_sampling=False
            )
        if sampler == "qmc":
            return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    raise ValueError(f"sampler must be one of 'tpe', 'random', 'gp', 'cmaes', 'qmc', got {sampler!r}")


def open_storage(storage: Any, cache_dir: Path):
    """An Optuna storage: ``None`` -> the journal under the cache folder; ``"scheme://..."`` -> RDB;
    any other string or path -> a journal file (file-locked, safe for many processes and hosts
    on a shared disk); an Optuna storage object is used as it is."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if storage is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        storage = cache_dir / JOURNAL_NAME
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    text = str(storage)
    if "://" in text:
        return optuna.storages.RDBStorage(text)
    path = Path(text).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(
        JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
    )


def check_choices(strategy: str, params) -> None:
    for p in params:
        for c in p.choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise TypeError(
                    f"search space of {strategy!r}: Param {p.name!r} choice {c!r} is a {type(c).__name__}; "
                    "Optuna categorical choices must be None, bool, int, float or str"
                )


def config_id(strategy: str, config: dict[str, Any]) -> tuple:
    return (strategy, tuple(sorted(config.items())))


def record_from_trial(t) -> TrialRecord | None:
    attrs = t.user_attrs
    if not t.state.is_finished() or "strategy" not in attrs:
        return None  # still running (another worker), or a trial this module did not write
    rec = TrialRecord(
        strategy=attrs["strategy"],
        config=dict(attrs.get("config", {})),
        state=attrs.get("state", "error"),
        ms=attrs.get("ms"),
        reason=attrs.get("reason", ""),
        err=attrs.get("err"),
        number=t.number,
        extra={k: attrs[k] for k in ("reused", "worker", "default") if k in attrs},
    )
    return rec


def _tell(study, trial, rec: TrialRecord, worker: str, reused: bool, is_default: bool = False) -> None:
    from optuna.trial import TrialState

    attrs = {"strategy": rec.strategy, "config": rec.config, "state": rec.state, "worker": worker}
    if rec.reason:
        attrs["reason"] = rec.reason
    if rec.err is not None:
        attrs["err"] = rec.err
    if rec.ms is not None:
        attrs["ms"] = rec.ms
    if reused:
        attrs["reused"] = True
    if is_default:
        attrs["default"] = True
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    if rec.state == "ok":
        study.tell(trial, rec.ms)
    elif rec.state == "invalid" or reused:
        # TPE ignores FAIL trials but ranks PRUNED ones below every success: a failure is
        # recorded as FAIL once, and a sampler that proposes it again is told PRUNED, so it
        # learns to leave that region instead of proposing it forever.
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


def search(
    study,
    strategies: tuple[str, ...],
    spaces: dict[str, Any],
    evaluate: Callable[[str, dict[str, Any]], TrialRecord],
    trials: int,
    *,
    flat: bool,
    default: tuple[str, dict[str, Any]] | None,
    progress: Progress,
    complete: Callable[[str, dict[str, Any]], dict[str, Any]] = lambda s, cfg: cfg,
    deadline: float | None = None,
) -> TrialRecord | None:
    """The ask/tell loop; returns the default's record (measured first) if one was given."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    seen: dict[tuple, TrialRecord] = {}
    for t in study.get_trials(deepcopy=False):
        rec = record_from_trial(t)
        if rec is not None and not rec.extra.get("reused"):
            seen.setdefault(config_id(rec.strategy, rec.config), rec)

    def refresh_seen() -> None:  # other workers' results, so we never re-run what they measured
        for t in study.get_trials(deepcopy=False):
            rec = record_from_trial(t)
            if rec is not None and not rec.extra.get("reused"):
                seen.setdefault(config_id(rec.strategy, rec.config), rec)

    default_rec = None
    if default is not None:
        d_strategy, d_cfg = default
        cid = config_id(d_strategy, d_cfg)
        try:
            default_rec = seen.get(cid) or evaluate(d_strategy, d_cfg)
        except DeviceFault as fault:
            _add_default_trial(study, strategies, spaces, fault.record, worker, flat)
            raise
        if cid not in seen:
            seen[cid] = default_rec
            _add_default_trial(study, strategies, spaces, default_rec, worker, flat)
        progress.update(default_rec)

    # ``trials`` budgets *fresh evaluations* (compiled, checked, timed): re-suggested configs
    # and ones the predicate rejects cost nothing, so they do not count, up to a cap on asks.
    space_size = sum(math.prod(len(p.choices) for p in spaces[s].params) for s in strategies)
    evaluated, asks, max_asks = 0, 0, 4 * trials + 50
    while evaluated < trials and asks < max_asks and len(seen) < space_size:
        if deadline is not None and time.perf_counter() > deadline:
            break
        asks += 1
        trial = study.ask()
        strategy = trial.suggest_categorical("strategy", list(strategies))
        config: dict[str, Any] = {}
        for name in strategies if flat else (strategy,):
            for p in spaces[name].params:
                value = trial.suggest_categorical(f"{name}.{p.name}", list(p.choices))
                if name == strategy:
                    config[p.name] = value
        config = complete(strategy, config)
        cid = config_id(strategy, config)
        if cid not in seen:
            refresh_seen()
        prior = seen.get(cid)
        try:
            rec = prior if prior is not None else evaluate(strategy, config)
        except DeviceFault as fault:  # keep the culprit in the study as failed, then stop
            _tell(study, trial, fault.record, worker, reused=False)
            progress.update(fault.record, fresh=True)
            raise
        if prior is None:
            seen[cid] = rec
            evaluated += rec.state != "invalid"
        _tell(study, trial, rec, worker, reused=prior is not None)
        progress.update(rec, fresh=prior is None)
    return default_rec


def _add_default_trial(study, strategies, spaces, rec: TrialRecord, worker: str, flat: bool) -> None:
    """Put the default into the study as a finished trial when its config lies in the space."""
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    space = spaces.get(rec.strategy)
    if space is None:
        return
    params: dict[str, Any] = {"strategy": rec.strategy}
    dists: dict[str, Any] = {"strategy": CategoricalDistribution(list(strategies))}
    names = {p.name: p for p in space.params}
    if any(n not in rec.config or rec.config[n] not in names[n].choices for n in names):
        return  # the default sits outside the tuned grid: it is still compared, not told
    if flat:
        return  # a fixed space would need values for every other strategy's params too
    for n, p in names.items():
        params[f"{rec.strategy}.{n}"] = rec.config[n]
        dists[f"{rec.strategy}.{n}"] = CategoricalDistribution(list(p.choices))
    attrs = {
        "strategy": rec.strategy,
        "config": rec.config,
        "state": rec.state,
        "worker": worker,
        "default": True,
    }
    if rec.ms is not None:
        attrs["ms"] = rec.ms
    if rec.reason:
        attrs["reason"] = rec.reason
    if rec.err is not None:
        attrs["err"] = rec.err
    state = {"ok": TrialState.COMPLETE, "invalid": TrialState.PRUNED}.get(rec.state, TrialState.FAIL)
    study.add_trial(
        create_trial(
            params=params,
            distributions=dists,
            value=rec.ms if rec.ok else None,
            state=state,
            user_attrs=attrs,
        )
    )
