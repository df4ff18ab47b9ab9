"""Tuning one core stage: Optuna search, the exhaustive grid, and replays of a recorded grid.

Each candidate goes through :class:`Evaluator`'s gates (valid, runs, matches the
reference on a probe, then timed). The heuristic default (what ``choose()`` runs untuned)
is always measured first and enters the study as a trial, so a tuned winner is never
slower than the default on the same inputs. ``trials`` budgets fresh evaluations.

Samplers: ``"tpe"`` (multivariate, grouped: handles the conditional space), ``"random"``,
``"gp"`` (needs scipy), ``"cmaes"`` (needs cmaes), ``"qmc"`` (needs scipy) or any
``optuna.samplers.BaseSampler``. GP, CMA-ES and QMC want a fixed space, so for them every
parameter of every strategy is suggested on each trial (the unused ones are ignored).
"""

from __future__ import annotations

import random
import time
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
from ._evaluate import DeviceFault, Evaluator, MakeInputs, Timer, TrialRecord
from ._key import TuneKey, make_key
from ._precompile import precompile
from ._report import Progress
from ._study import (
    FLAT_SAMPLERS,
    check_choices,
    config_id,
    make_sampler,
    open_storage,
    record_from_trial,
    search,
)

__all__ = ["TuneResult", "tune", "grid_search", "replay", "is_backward_param"]


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


def _setup(
    sig, shape, dtype, legal, loader, make_inputs, timer, device, check_grads, objective, fix=None
) -> _Problem:
    from ._space import SearchSpace

    fix = dict(fix or {})
    strategies = usable_strategies(sig, tuple(legal), loader)
    if not strategies:
        raise ValueError(
            f"nothing to tune for {sig.describe()}: none of {list(legal)} is built and supports it"
        )
    ev = Evaluator(
        sig, shape, dtype, loader=loader, make_inputs=make_inputs, timer=timer, device=device,
        check_grads=check_grads, objective=objective,
    )  # fmt: skip
    spaces, fixed, known = {}, {}, set()
    for s in strategies:
        mod = ev.module(s)
        full = mod.search_space(sig, shape)
        check_choices(s, full.params)
        names = {p.name for p in full.params}
        known |= names
        for name, value in fix.items():
            param = next((p for p in full.params if p.name == name), None)
            if param is not None and value not in param.choices:
                raise ValueError(f"fix: {s}.{name}={value!r} is not one of its choices {param.choices}")
        keep = tuple(
            p for p in full.params
            if (objective != "fwd" or not is_backward_param(p.name)) and p.name not in fix
        )  # fmt: skip
        kept = {p.name for p in keep}
        base = {**dict(mod.default_config(sig, shape)), **{k: v for k, v in fix.items() if k in names}}
        fixed[s] = {k: v for k, v in base.items() if k not in kept}
        if len(keep) == len(full.params):
            spaces[s] = full
        else:
            spaces[s] = SearchSpace(s, keep, lambda cfg, full=full, fx=fixed[s]: full.valid({**fx, **cfg}))
    unknown = sorted(set(fix) - known)
    if unknown:
        raise ValueError(f"fix: no strategy of {list(strategies)} has the parameter(s) {unknown}")
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
    budget_s: float | None = None,
    write_cache: bool = True,
    cache_dir: Path | None = None,
    loader: Callable[[str], ModuleType | None] = load_strategy,
    fix: dict[str, Any] | None = None,
) -> TuneResult:
    """Tune one core stage; record the winner in the cache.

    ``trials`` is the budget of *fresh evaluations* (candidates compiled, checked and timed);
    Optuna may ask more often, since re-suggested and invalid configs cost nothing.
    ``budget_s`` also stops the search when that many seconds have passed.

    ``make_inputs(shape, seed) -> CoreInputs`` builds inputs on the tuning device (default:
    :func:`scandsl.testing.random_core_inputs`). ``storage`` shares the study between
    processes or hosts (see :func:`open_storage`); the study is named by the cache key, so
    everyone tuning the same key on the same kind of GPU joins the same study. ``fix`` pins
    parameters (``{"num_stages": 2}``) out of the searched space, for every strategy that has them.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    dev = _resolve_device(device)
    cache_dir = Path(cache_dir) if cache_dir is not None else knobs.cache_dir()
    key = make_key(spec_key, sig, shape, dtype, dev)
    prob = _setup(sig, shape, dtype, legal, loader, make_inputs, timer, dev, check_grads, objective, fix)
    name = isinstance(sampler, str) and sampler or type(sampler).__name__
    flat = isinstance(sampler, str) and sampler in FLAT_SAMPLERS
    study = optuna.create_study(
        storage=open_storage(storage, cache_dir),
        # a pinned sub-space is another study: its trials must not mix with the full space's
        study_name=study_name or (str(key) + (f"|fix:{sorted(fix.items())}" if fix else "")),
        direction="minimize",
        sampler=make_sampler(sampler, seed=seed, n_startup=max(3, min(10, trials // 4))),
        load_if_exists=True,
    )
    try:
        with Progress(total=trials + 1, title=f"tuning {spec_key} [{key.sig}]", enabled=progress) as bar:
            default_rec = search(
                study, prob.strategies, prob.spaces, prob.evaluate, trials, flat=flat, default=prob.default,
                progress=bar, complete=prob.complete, deadline=None if budget_s is None else t0 + budget_s,
            )  # fmt: skip
    except DeviceFault as fault:  # hand the caller what was measured before the fault, too
        fault.records = _study_records(study)
        raise
    records = _study_records(study)
    result = TuneResult(
        key=key, records=records, default=default_rec, sampler=name, study_name=study.study_name,
        storage=None if storage is None else str(storage), seconds=time.perf_counter() - t0,
    )  # fmt: skip
    if write_cache:
        _write_winner(result, cache_dir)
    return result


def _study_records(study) -> list[TrialRecord]:
    """Every trial of ``study`` that carries a record (pruned or running trials do not)."""
    return [r for r in (record_from_trial(t) for t in study.get_trials(deepcopy=False)) if r is not None]


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
    budget_s: float | None = None,
    shuffle_seed: int | None = None,
    on_record: Callable[[TrialRecord], None] | None = None,
    fix: dict[str, Any] | None = None,
    compile_workers: int = 0,
) -> TuneResult:
    """Evaluate every valid config of every legal, built strategy (the baseline tuning is judged by).

    With ``budget_s`` the walk stops when the time is spent (``result.meta["complete"]`` says
    whether it finished); ``shuffle_seed`` visits the grid in a random order, so a stopped walk
    is an unbiased sample of the space rather than its first corner.

    ``compile_workers > 0`` on a GPU first compiles the grid in that many processes (see
    ``_precompile.py``; it stops handing out configs once half of ``budget_s`` is spent, so the
    timed walk keeps the other half); ``meta`` then records ``precompile_s`` and ``precompiled``.
    """
    t0 = time.perf_counter()
    dev = _resolve_device(device)
    key = make_key(spec_key, sig, shape, dtype, dev)
    prob = _setup(sig, shape, dtype, legal, loader, make_inputs, timer, dev, check_grads, objective, fix)
    ev, (d_strategy, d_cfg) = prob.evaluator, prob.default
    grid = [(s, prob.complete(s, cfg)) for s in prob.strategies for cfg in prob.spaces[s].grid()]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(grid)
    meta: dict[str, Any] = {"complete": True, "grid_size": len(grid)}
    if compile_workers > 0:
        deadline = None if budget_s is None else t0 + budget_s / 2
        meta |= precompile(grid, evaluator=ev, workers=compile_workers, deadline=deadline)
    records: list[TrialRecord] = []
    default_rec = None
    complete = True
    fault_msg = None
    with Progress(total=len(grid), title=f"grid {spec_key} [{key.sig}]", enabled=progress) as bar:
        for i, (s, cfg) in enumerate(grid):
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                complete = False
                break
            try:
                rec = ev.evaluate(s, cfg)
            except DeviceFault as fault:  # the context is lost: keep what was measured, say why
                rec, complete = fault.record, False
                rec.number = i
                records.append(rec)
                fault_msg = str(fault)
                break
            if on_record is not None:
                on_record(rec)
            rec.number = i
            records.append(rec)
            if s == d_strategy and cfg == d_cfg:
                default_rec = rec
            bar.update(rec)
    if default_rec is None and fault_msg is None:
        default_rec = ev.evaluate(d_strategy, d_cfg)
    meta["complete"] = complete
    if fault_msg is not None:
        meta["device_fault"] = fault_msg
    result = TuneResult(
        key=key, records=records, default=default_rec, sampler="grid", seconds=time.perf_counter() - t0,
        meta=meta,
    )  # fmt: skip
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
    table = {config_id(r.strategy, r.config): r for r in grid.records}
    strategies = tuple(dict.fromkeys(r.strategy for r in grid.records))
    spaces = _spaces_from_records(grid.records)

    def evaluate(strategy: str, config: dict[str, Any]) -> TrialRecord:
        hit = table.get(config_id(strategy, config))
        if hit is None:
            return TrialRecord(strategy, dict(config), "invalid", reason="not in the recorded grid")
        return TrialRecord(strategy, dict(config), hit.state, ms=hit.ms, reason=hit.reason, err=hit.err)

    flat = isinstance(sampler, str) and sampler in FLAT_SAMPLERS
    study = optuna.create_study(
        direction="minimize", sampler=make_sampler(sampler, seed=seed, n_startup=max(3, min(10, trials // 4)))
    )
    default = None
    if grid.default is not None and config_id(grid.default.strategy, grid.default.config) in table:
        default = (grid.default.strategy, grid.default.config)
    default_rec = search(
        study,
        strategies,
        spaces,
        evaluate,
        trials,
        flat=flat,
        default=default,
        progress=Progress(enabled=False),
    )
    records = _study_records(study)
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
