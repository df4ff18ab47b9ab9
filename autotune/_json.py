"""TuneResult <-> JSON (records of a tuning or grid run, for plots, docs and offline replays)."""

from __future__ import annotations

from typing import Any

from ._evaluate import TrialRecord
from ._key import TuneKey

__all__ = ["record_to_json", "record_from_json", "result_to_json", "result_from_json"]


def record_to_json(r: TrialRecord | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"number": r.number, "strategy": r.strategy, "config": r.config, "state": r.state,
            "ms": r.ms, "reason": r.reason, "err": r.err, **r.extra}  # fmt: skip


def record_from_json(d: dict[str, Any] | None) -> TrialRecord | None:
    if d is None:
        return None
    extra = {
        k: v
        for k, v in d.items()
        if k not in ("number", "strategy", "config", "state", "ms", "reason", "err")
    }
    return TrialRecord(strategy=d["strategy"], config=dict(d["config"]), state=d["state"], ms=d.get("ms"),
                       reason=d.get("reason", ""), err=d.get("err"), number=d.get("number", -1), extra=extra)  # fmt: skip


def result_to_json(result) -> dict[str, Any]:
    return {
        "key": str(result.key),
        "key_fields": result.key.fields(),
        "sampler": result.sampler,
        "seconds": result.seconds,
        "meta": result.meta,
        "best": record_to_json(result.best),
        "default": record_to_json(result.default),
        "worst": record_to_json(result.worst),
        "evaluations": result.evaluations,
        "records": [record_to_json(r) for r in result.records],
    }


def result_from_json(d: dict[str, Any]):
    from ._tune import TuneResult

    return TuneResult(
        key=TuneKey(**d["key_fields"]),
        records=[record_from_json(r) for r in d["records"]],
        default=record_from_json(d.get("default")),
        sampler=d.get("sampler", ""),
        seconds=d.get("seconds", 0.0),
        meta=d.get("meta", {}),
    )
