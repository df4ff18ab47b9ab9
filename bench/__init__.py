"""Benchmark harness (issue 8)."""
