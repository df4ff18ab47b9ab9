"""Test-wide setup: kernels run on the Triton interpreter when there is no GPU."""

import os
import sys
from pathlib import Path

import pytest

# Must be set before triton is imported anywhere.
if os.environ.get("SCANDSL_TEST_DEVICE", "") != "cuda":
    try:
        import torch

        _has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        _has_gpu = False
    if not _has_gpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
