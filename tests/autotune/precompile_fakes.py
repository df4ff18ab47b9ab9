"""Picklable fake strategies for the pre-compile tests: spawned workers load them by name.

:func:`loader` is a module-level function, so it pickles by reference and a worker rebuilds
the same fakes by importing this module. In a worker process every run appends one JSON line
(strategy, config, input shape) to the file named by ``SCANDSL_TEST_PRECOMPILE_LOG``, and the
config given (as JSON) in ``SCANDSL_TEST_PRECOMPILE_DIE`` kills the worker, as a device fault
would. In the tuning process itself they behave like the fakes of ``autotune_fakes``;
``RAISES`` raises everywhere, like a config Triton cannot compile.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from types import SimpleNamespace

from autotune_fakes import chunk_like, sequential_like, synthetic_timer

LOG = "SCANDSL_TEST_PRECOMPILE_LOG"
DIE = "SCANDSL_TEST_PRECOMPILE_DIE"
RAISES = {"BT": 32, "BK": 16, "BV": 32, "num_warps": 4}


def _logged(mod: SimpleNamespace) -> SimpleNamespace:
    inner = mod.run

    def run(sig, x, config=None):
        if multiprocessing.parent_process() is not None:  # in a pre-compile worker
            with open(os.environ[LOG], "a") as f:
                f.write(json.dumps({"strategy": mod.name, "config": config, "shape": list(x.q.shape)}) + "\n")
            if config == json.loads(os.environ.get(DIE, "null")):
                os._exit(3)
        return inner(sig, x, config)

    mod.run = run
    return mod


MODS = {m.name: _logged(m) for m in (chunk_like(crash=lambda cfg: cfg == RAISES), sequential_like())}
TIMER = synthetic_timer(MODS)


def loader(name: str) -> SimpleNamespace | None:
    return MODS.get(name)


def worker_runs() -> list[dict]:
    """Every run the workers logged, in the order they wrote them."""
    path = os.environ[LOG]
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]
