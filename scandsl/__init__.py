"""scandsl: write a linear recurrence as a spec, get fused kernels for it."""

__version__ = "0.1.0"
