"""Every environment knob scandsl reads, in one typed place.

Read each knob through this module (``knobs.dump_dir()``), never with a scattered
``os.getenv``; ``docs/knobs.md`` lists them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Knob", "KNOBS", "dump_dir", "cache_dir", "tune_on_miss", "check_ir", "check_values", "interpret"]


@dataclass(frozen=True, slots=True)
class Knob:
    name: str
    default: str
    doc: str

    def get(self) -> str:
        return os.environ.get(self.name, self.default)


KNOBS: tuple[Knob, ...] = (
    Knob("SCANDSL_DUMP", "", "Folder; when set, every generated Triton kernel is written there."),
    Knob(
        "SCANDSL_CACHE_DIR",
        str(Path("~/.cache/scandsl").expanduser()),
        "Where autotune journals and the readable config cache live.",
    ),
    Knob("SCANDSL_TUNE", "0", "1: strategy='auto' tunes on a cache miss instead of using the heuristic."),
    Knob("SCANDSL_CHECK_IR", "0", "1: run the normal-form checker between every lowering pass."),
    Knob(
        "SCANDSL_CHECK_VALUES",
        "host",
        "Value checks of constrained inputs (log-gates <= 0, positive, non-negative): 'host' checks "
        "CPU tensors only (on a GPU a check is a device-to-host sync per call), 1 checks every "
        "device too, 0 none.",
    ),
    Knob("TRITON_INTERPRET", "0", "Triton's own: 1 runs kernels on the CPU through NumPy."),
)
_BY_NAME = {k.name: k for k in KNOBS}


def _flag(name: str) -> bool:
    return _BY_NAME[name].get().strip().lower() in ("1", "true", "yes", "on")


def dump_dir() -> Path | None:
    value = _BY_NAME["SCANDSL_DUMP"].get()
    return Path(value) if value else None


def cache_dir() -> Path:
    return Path(_BY_NAME["SCANDSL_CACHE_DIR"].get()).expanduser()


def tune_on_miss() -> bool:
    return _flag("SCANDSL_TUNE")


def check_ir() -> bool:
    return _flag("SCANDSL_CHECK_IR")


def check_values(device) -> bool:
    """Whether inputs on ``device`` get their value checks (see SCANDSL_CHECK_VALUES)."""
    mode = _BY_NAME["SCANDSL_CHECK_VALUES"].get().strip().lower()
    if mode in ("0", "false", "no", "off"):
        return False
    if mode in ("1", "true", "yes", "on", "always"):
        return True
    return device.type == "cpu"


def interpret() -> bool:
    return _flag("TRITON_INTERPRET")
