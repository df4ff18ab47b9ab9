"""Turning generated Triton source text into importable, dumpable kernels.

``triton.jit`` reads a kernel's source with ``inspect``, so generated code must live in
a real file. ``load_source`` writes each distinct source once, under the cache folder,
named by its content hash, imports it as a module and returns it. With the knob
``SCANDSL_DUMP=dir`` every generated module is also copied there under a readable name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from types import ModuleType

from scandsl import knobs

__all__ = ["load_source", "generated_dir", "at_depth"]

_LOCK = threading.Lock()
_LOADED: dict[str, ModuleType] = {}


def generated_dir() -> Path:
    path = knobs.cache_dir() / "generated"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_source(source: str, *, name: str) -> ModuleType:
    """Import generated ``source`` as a module; ``name`` is a readable stem (``seq_fwd_key``)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    with _LOCK:
        if digest in _LOADED:
            return _LOADED[digest]
        stem = f"{name}_{digest}"
        path = generated_dir() / f"{stem}.py"
        if not path.exists() or path.read_text() != source:
            # write-then-rename so concurrent processes never import a half-written file
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                fh.write(source)
            os.replace(tmp, path)
        dump = knobs.dump_dir()
        if dump is not None:
            dump.mkdir(parents=True, exist_ok=True)
            (dump / f"{name}.py").write_text(source)
        mod_name = f"scandsl_generated.{stem}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
        _LOADED[digest] = module
        return module


def at_depth(depth: int, text: str) -> str:
    """``text`` re-indented to ``depth`` spaces, to stand on its own line of a kernel template."""
    return textwrap.indent(textwrap.dedent(text).strip("\n"), " " * depth)
