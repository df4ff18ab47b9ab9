"""Decoding: one token in, state in / state out — the constant-time inference step."""

from __future__ import annotations

from typing import Any

import torch

from scandsl._entry import apply

__all__ = ["step"]


def step(
    spec, state: Any, /, *, strategy: str = "sequential", scale: float | None = None, **inputs: torch.Tensor
):
    """Advance ``spec`` by one token.

    Per-step inputs come without a time axis (``q`` is ``[B, H, K]``); per-head parameters as
    usual. ``state`` is what the op returns as its final state (``None`` = zeros).
    Returns ``(o [B, H, ...], new_state)``; ``step`` applied token by token equals the
    full-sequence op. One kernel launch per core stage.
    """
    decls = spec.input_decls
    args: dict[str, Any] = {}
    for name, x in inputs.items():
        if name not in decls:
            raise TypeError(f"step({spec.name}): unexpected input {name!r}")
        if decls[name].time and isinstance(x, torch.Tensor):
            want = 2 + len(decls[name].axes)
            if x.dim() != want:
                raise ValueError(
                    f"{name}: expected one token {decls[name].shape_doc().replace('B,T,H', 'B,H')}, "
                    f"got shape {tuple(x.shape)}"
                )
            x = x.unsqueeze(1)
        args[name] = x
    args.update(scale=scale, initial_state=state, output_final_state=True, strategy=strategy)
    o, new_state = apply(spec, args)
    return o.squeeze(1), new_state
