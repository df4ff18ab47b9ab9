"""Golden copies of generated sequential kernels: a codegen change must show in the diff.

If a change is intended, regenerate with ``python -m scandsl.lowering.sequential --write-golden``
and commit the new ``lowering/golden/seq_*.py`` together with the change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scandsl.lowering import sequential

GOLDEN_DIR = Path(sequential.__file__).parent / "golden"


@pytest.mark.parametrize("name", sorted(sequential.GOLDEN))
def test_sequential_golden(name):
    path = GOLDEN_DIR / f"{name}.py"
    assert path.exists(), (
        f"{path} is missing: regenerate with python -m scandsl.lowering.sequential --write-golden"
    )
    now = sequential.generate_source(sequential.GOLDEN[name])[name]
    assert now == path.read_text(), (
        f"generated {name} differs from {path}; if the change is intended, regenerate with "
        "python -m scandsl.lowering.sequential --write-golden"
    )
