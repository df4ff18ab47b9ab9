"""Autotuning with Optuna (issue 7)."""
