"""One tuning worker for the shared-journal test: ``autotune_worker.py JOURNAL SEED TRIALS``."""

from __future__ import annotations

import json
import sys

import torch
from autotune_fakes import TINY, chunk_like, loader_for, scan_like, sequential_like, synthetic_timer
from scandsl.autotune import CacheEntry, cache_at, tune

from scandsl import knobs
from scandsl.testing import TAXONOMY_SIGS


def main() -> None:
    journal, seed, trials = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    mods = {m.name: m for m in (chunk_like(), sequential_like(), scan_like())}
    res = tune(
        "fake", TAXONOMY_SIGS["scalar"], TINY, torch.float32, ("sequential", "scan", "chunk"),
        make_inputs=None, trials=trials, storage=journal, timer=synthetic_timer(mods),
        loader=loader_for(*mods.values()), progress=False, seed=seed,
    )  # fmt: skip
    # a second, distinct key from each worker: concurrent writers must merge, not overwrite
    cache_at(knobs.cache_dir()).put(f"extra-{seed}", CacheEntry(strategy="chunk", config={}, ms=1.0 + seed))
    print(json.dumps({"study": res.study_name, "key": str(res.key), "n": len(res.records)}))


if __name__ == "__main__":
    main()
