"""Searching strategy × tile space with Optuna (ask/tell), and the exhaustive grid baseline.

The search space is conditional: a trial first picks a strategy among the legal, built
ones, then that strategy's own parameters (named ``<strategy>.<param>``, from its
``search_space(sig, shape)``). Each candidate goes through :class:`Evaluator`'s gates;
its outcome is told to Optuna as

- ``PRUNED`` for an invalid config (user attr ``state="invalid"`` and the ``reason``),
- ``FAIL`` for a compile/launch error or a wrong result (``state`` ``error`` / ``wrong``),
- ``COMPLETE`` with the median time in ms otherwise.

A config already evaluated in the study (by this process or another one sharing the
storage) is not run again: its recorded outcome is told for the new trial, so samplers
that re-suggest good points cost nothing. The heuristic default (what ``choose()`` runs
untuned) is always measured first and enters the study as a trial, so a tuned winner is
never slower than the default on the same inputs.

Samplers: ``"tpe"`` (multivariate, grouped: handles the conditional space), ``"random"``,
``"gp"`` (needs scipy), ``"cmaes"`` (needs cmaes), ``"qmc"`` (needs scipy) or any
``optuna.samplers.BaseSampler``. GP, CMA-ES and QMC want a fixed space, so for them every
parameter of every strategy is suggested on each trial (the unused ones are ignored).
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from scandsl.lowering import load_strategy

from scandsl import knobs
from scandsl._core import CoreSig, Shape

from ._cache import CacheEntry, cache_at
from ._choose import forget_choices, heuristic, usable_strategies
from ._evaluate import Evaluator, MakeInputs, Timer, TrialRecord
from ._key import TuneKey, make_key
from ._report import Progress

__all__ = ["TuneResult", "tune", "grid_search", "replay", "make_sampler", "open_storage", "JOURNAL_NAME"]

JOURNAL_NAME = "optuna-journal.log"
_FLAT_SAMPLERS = ("gp", "cmaes", "qmc")


@dataclass
class TuneResult:
    """Everything one tuning (or grid) run learned about a key."""

    key: TuneKey
    records: list[TrialRecord]  # in trial order; includes other workers' trials of a shared study
    default: TrialRecord | None  # the heuristic default, measured on the same inputs
    sampler: str
    study_name: str | None = None
    storage: str | None = None
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok_records(self) -> list[TrialRecord]:
        return [r for r in self.records if r.ok]

    @property
    def best(self) -> TrialRecord | None:
        ok = self.ok_records + ([self.default] if self.default is not None and self.default.ok else [])
        return min(ok, key=lambda r: r.ms) if ok else None

    @property
    def worst(self) -> TrialRecord | None:
        ok = self.ok_records
        return max(ok, key=lambda r: r.ms) if ok else None

    @property
    def evaluations(self) -> int:
        """Distinct candidates actually compiled / checked / timed (re-used outcomes excluded)."""
        return sum(1 for r in self.records if not r.extra.get("reused") and r.state != "invalid")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records:
            out[r.state] = out.get(r.state, 0) + 1
        return out

    def best_so_far(self) -> list[float | None]:
        """Best ms after each record (None before the first success): the search history."""
        best, out = None, []
        for r in self.records:
            if r.ok and (best is None or r.ms < best):
                best = r.ms
            out.append(best)
        return out


# -- Optuna plumbing -----------------------------------------------------------------------
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


def _check_choices(strategy: str, params) -> None:
    for p in params:
        for c in p.choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise TypeError(
                    f"search space of {strategy!r}: Param {p.name!r} choice {c!r} is a {type(c).__name__}; "
                    "Optuna categorical choices must be None, bool, int, float or str"
                )


def _config_id(strategy: str, config: dict[str, Any]) -> tuple:
    return (strategy, tuple(sorted(config.items())))


def _record_from_trial(t) -> TrialRecord | None:
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
    elif rec.state == "invalid":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


def _search(
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
) -> TrialRecord | None:
    """The ask/tell loop; returns the default's record (measured first) if one was given."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    seen: dict[tuple, TrialRecord] = {}
    for t in study.get_trials(deepcopy=False):
        rec = _record_from_trial(t)
        if rec is not None and not rec.extra.get("reused"):
            seen.setdefault(_config_id(rec.strategy, rec.config), rec)

    def refresh_seen() -> None:  # other workers' results, so we never re-run what they measured
        for t in study.get_trials(deepcopy=False):
            rec = _record_from_trial(t)
            if rec is not None and not rec.extra.get("reused"):
                seen.setdefault(_config_id(rec.strategy, rec.config), rec)

    default_rec = None
    if default is not None:
        d_strategy, d_cfg = default
        cid = _config_id(d_strategy, d_cfg)
        default_rec = seen.get(cid) or evaluate(d_strategy, d_cfg)
        if cid not in seen:
            seen[cid] = default_rec
            _add_default_trial(study, strategies, spaces, default_rec, worker, flat)
        progress.update(default_rec)

    # ``trials`` budgets *fresh evaluations* (compiled, checked, timed): re-suggested configs
    # and ones the predicate rejects cost nothing, so they do not count, up to a cap on asks.
    space_size = sum(math.prod(len(p.choices) for p in spaces[s].params) for s in strategies)
    evaluated, asks, max_asks = 0, 0, 4 * trials + 50
    while evaluated < trials and asks < max_asks and len(seen) < space_size:
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
        cid = _config_id(strategy, config)
        if cid not in seen:
            refresh_seen()
        prior = seen.get(cid)
        rec = prior if prior is not None else evaluate(strategy, config)
        if prior is None:
            seen[cid] = rec
            evaluated += rec.state != "invalid"
        _tell(study, trial, rec, worker, reused=prior is not None)
        progress.update(rec)
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


# -- public entry points -------------------------------------------------------------------
def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


def is_backward_param(name: str) -> bool:
    """Naming convention of strategy search spaces: ``bwd_*`` / ``*_bwd`` tune only the backward."""
    return name.startswith("bwd_") or name.endswith("_bwd")


@dataclass
class _Problem:
    """The searched sub-space per strategy, and how a suggestion becomes a full config.

    With ``objective="fwd"`` the backward-only parameters cannot change the time, so they
    are fixed at the strategy's default instead of multiplying the space (for the chunked
    kernels: ~180 forward configs instead of ~80 000 joint ones).
    """

    strategies: tuple[str, ...]
    evaluator: Evaluator
    spaces: dict[str, Any]
    fixed: dict[str, dict[str, Any]]
    default: tuple[str, dict[str, Any]]

    def complete(self, strategy: str, config: dict[str, Any]) -> dict[str, Any]:
        return {**self.fixed[strategy], **config}

    def evaluate(self, strategy: str, config: dict[str, Any]) -> TrialRecord:
        return self.evaluator.evaluate(strategy, self.complete(strategy, config))


def _setup(sig, shape, dtype, legal, loader, make_inputs, timer, device, check_grads, objective) -> _Problem:
    from ._space import SearchSpace

    strategies = usable_strategies(sig, tuple(legal), loader)
    if not strategies:
        raise ValueError(
            f"nothing to tune for {sig.describe()}: none of {list(legal)} is built and supports it"
        )
    ev = Evaluator(
        sig, shape, dtype, loader=loader, make_inputs=make_inputs, timer=timer, device=device,
        check_grads=check_grads, objective=objective,
    )  # fmt: skip
    spaces, fixed = {}, {}
    for s in strategies:
        mod = ev.module(s)
        full = mod.search_space(sig, shape)
        _check_choices(s, full.params)
        keep = tuple(p for p in full.params if objective != "fwd" or not is_backward_param(p.name))
        kept = {p.name for p in keep}
        fixed[s] = {k: v for k, v in dict(mod.default_config(sig, shape)).items() if k not in kept}
        if len(keep) == len(full.params):
            spaces[s] = full
        else:
            spaces[s] = SearchSpace(s, keep, lambda cfg, full=full, fx=fixed[s]: full.valid({**fx, **cfg}))
    d_strategy = heuristic(sig, shape, strategies, loader)
    d_cfg = dict(ev.module(d_strategy).default_config(sig, shape))
    return _Problem(strategies, ev, spaces, fixed, (d_strategy, d_cfg))


def tune(
    spec_key: str,
    sig: CoreSig,
    shape: Shape,
    dtype: torch.dtype,
    legal: tuple[str, ...],
    *,
    make_inputs: MakeInputs | None,
    trials: int,
    storage: Any = None,
    sampler: Any = "tpe",
    timer: Timer | None = None,
    progress: bool = True,
    check_grads: bool = False,
    objective: str = "fwd",
    device: torch.device | str | int | None = None,
    seed: int | None = None,
    study_name: str | None = None,
    write_cache: bool = True,
    cache_dir: Path | None = None,
    loader: Callable[[str], ModuleType | None] = load_strategy,
) -> TuneResult:
    """Tune one core stage; record the winner in the cache.

    ``trials`` is the budget of *fresh evaluations* (candidates compiled, checked and timed);
    Optuna may ask more often, since re-suggested and invalid configs cost nothing.

    ``make_inputs(shape, seed) -> CoreInputs`` builds inputs on the tuning device (default:
    :func:`scandsl.testing.random_core_inputs`). ``storage`` shares the study between
    processes or hosts (see :func:`open_storage`); the study is named by the cache key, so
    everyone tuning the same key on the same kind of GPU joins the same study.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    dev = _resolve_device(device)
    cache_dir = Path(cache_dir) if cache_dir is not None else knobs.cache_dir()
    key = make_key(spec_key, sig, shape, dtype, dev)
    prob = _setup(sig, shape, dtype, legal, loader, make_inputs, timer, dev, check_grads, objective)
    name = isinstance(sampler, str) and sampler or type(sampler).__name__
    flat = isinstance(sampler, str) and sampler in _FLAT_SAMPLERS
    study = optuna.create_study(
        storage=open_storage(storage, cache_dir),
        study_name=study_name or str(key),
        direction="minimize",
        sampler=make_sampler(sampler, seed=seed, n_startup=max(3, min(10, trials // 4))),
        load_if_exists=True,
    )
    with Progress(total=trials + 1, title=f"tuning {spec_key} [{key.sig}]", enabled=progress) as bar:
        default_rec = _search(
            study, prob.strategies, prob.spaces, prob.evaluate, trials, flat=flat, default=prob.default,
            progress=bar, complete=prob.complete,
        )  # fmt: skip
    records = [r for r in (_record_from_trial(t) for t in study.get_trials(deepcopy=False)) if r is not None]
    result = TuneResult(
        key=key, records=records, default=default_rec, sampler=name, study_name=study.study_name,
        storage=None if storage is None else str(storage), seconds=time.perf_counter() - t0,
    )  # fmt: skip
    if write_cache:
        _write_winner(result, cache_dir)
    return result


def grid_search(
    spec_key: str,
    sig: CoreSig,
    shape: Shape,
    dtype: torch.dtype,
    legal: tuple[str, ...],
    *,
    make_inputs: MakeInputs | None = None,
    timer: Timer | None = None,
    progress: bool = True,
    check_grads: bool = False,
    objective: str = "fwd",
    device: torch.device | str | int | None = None,
    write_cache: bool = False,
    cache_dir: Path | None = None,
    loader: Callable[[str], ModuleType | None] = load_strategy,
) -> TuneResult:
    """Evaluate every valid config of every legal, built strategy (the baseline tuning is judged by)."""
    t0 = time.perf_counter()
    dev = _resolve_device(device)
    key = make_key(spec_key, sig, shape, dtype, dev)
    prob = _setup(sig, shape, dtype, legal, loader, make_inputs, timer, dev, check_grads, objective)
    ev, (d_strategy, d_cfg) = prob.evaluator, prob.default
    grid = [(s, prob.complete(s, cfg)) for s in prob.strategies for cfg in prob.spaces[s].grid()]
    records: list[TrialRecord] = []
    default_rec = None
    with Progress(total=len(grid), title=f"grid {spec_key} [{key.sig}]", enabled=progress) as bar:
        for i, (s, cfg) in enumerate(grid):
            rec = ev.evaluate(s, cfg)
            rec.number = i
            records.append(rec)
            if s == d_strategy and cfg == d_cfg:
                default_rec = rec
            bar.update(rec)
    if default_rec is None:
        default_rec = ev.evaluate(d_strategy, d_cfg)
    result = TuneResult(
        key=key, records=records, default=default_rec, sampler="grid", seconds=time.perf_counter() - t0
    )
    if write_cache:
        _write_winner(result, Path(cache_dir) if cache_dir is not None else knobs.cache_dir())
    return result


def replay(grid: TuneResult, *, sampler: Any = "tpe", trials: int, seed: int | None = None) -> TuneResult:
    """Run the Optuna search on a *recorded* grid (no kernels): how many trials a sampler needs.

    Outcomes are looked up in ``grid.records``; configs outside it count as invalid. This
    lets the sampler comparison repeat over many seeds at no GPU cost, on a real landscape.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = {_config_id(r.strategy, r.config): r for r in grid.records}
    strategies = tuple(dict.fromkeys(r.strategy for r in grid.records))
    spaces = _spaces_from_records(grid.records)

    def evaluate(strategy: str, config: dict[str, Any]) -> TrialRecord:
        hit = table.get(_config_id(strategy, config))
        if hit is None:
            return TrialRecord(strategy, dict(config), "invalid", reason="not in the recorded grid")
        return TrialRecord(strategy, dict(config), hit.state, ms=hit.ms, reason=hit.reason, err=hit.err)

    flat = isinstance(sampler, str) and sampler in _FLAT_SAMPLERS
    study = optuna.create_study(
        direction="minimize", sampler=make_sampler(sampler, seed=seed, n_startup=max(3, min(10, trials // 4)))
    )
    default = None
    if grid.default is not None and _config_id(grid.default.strategy, grid.default.config) in table:
        default = (grid.default.strategy, grid.default.config)
    default_rec = _search(
        study,
        strategies,
        spaces,
        evaluate,
        trials,
        flat=flat,
        default=default,
        progress=Progress(enabled=False),
    )
    records = [r for r in (_record_from_trial(t) for t in study.get_trials(deepcopy=False)) if r is not None]
    name = isinstance(sampler, str) and sampler or type(sampler).__name__
    return TuneResult(key=grid.key, records=records, default=default_rec or grid.default, sampler=name)


def _spaces_from_records(records: Iterable[TrialRecord]):
    from ._space import Param, SearchSpace

    values: dict[str, dict[str, list]] = {}
    for r in records:
        per = values.setdefault(r.strategy, {})
        for k, v in r.config.items():
            if v not in per.setdefault(k, []):
                per[k].append(v)
    return {s: SearchSpace(s, tuple(Param(k, tuple(v)) for k, v in per.items())) for s, per in values.items()}


def _write_winner(result: TuneResult, cache_dir: Path) -> None:
    best = result.best
    if best is None:
        return
    worst = result.worst
    entry = CacheEntry(
        strategy=best.strategy,
        config=dict(best.config),
        ms=float(best.ms),
        default_ms=result.default.ms if result.default is not None and result.default.ok else None,
        worst_ms=worst.ms if worst is not None else None,
        trials=len(result.records),
        evaluations=result.evaluations,
        tuned_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        key=result.key.fields(),
    )
    cache_at(cache_dir).put(str(result.key), entry)
    forget_choices()
