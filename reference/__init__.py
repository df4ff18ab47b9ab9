"""The reference interpreter: one generic PyTorch loop that runs any spec, step by step.

It interprets the *traced spec itself* — the state updates and the read-out exactly as
the user wrote them — not the normal form the kernels are lowered from, so it checks
the classification as well as the kernels. Differentiable with autograd; float64-capable.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from scandsl._core import _row_index, _sequence_bounds
from scandsl._dsl import Affine
from scandsl._expr import Input, Node, Read, align, evaluate, walk

__all__ = ["run_reference"]


def _param_view(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(0)  # [H, ...] -> [1, H, ...] beside per-step [B, H, ...]


def _step_state(aff: Affine, prev: torch.Tensor, env: Mapping[Node, torch.Tensor], sizes) -> torch.Tensor:
    """``factors ⊙ S_{t-1} @ transition + Σ addends`` for one step, on ``[B, H, *axes]``."""
    s = prev
    for f in aff.factors:
        s = s * align(evaluate(f, env, sizes), f.axes, aff.axes)
    if aff.transition is not None:
        s = s @ evaluate(aff.transition, env, sizes)
    for u in aff.addends:
        s = s + align(evaluate(u, env, sizes), u.axes, aff.axes)
    return s


def _read_value(node: Read, states_prev, states_new, env, sizes) -> torch.Tensor:
    s = (states_prev if node.version == "prev" else states_new)[node.state]
    q = evaluate(node.query, env, sizes)
    if s.dim() - 2 == 2 and len(node.query.axes) == 1:
        return (s * q.unsqueeze(-2)).sum(-1)  # S q
    return (s * q).sum(-1)  # zᵀq, or the row-wise Σ_k S[:, k] C[:, k]


def run_reference(
    spec,
    inputs: Mapping[str, torch.Tensor],
    sizes: Mapping[str, int],
    initial: Mapping[str, torch.Tensor] | None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run ``spec`` over ``[B, T, H, ...]`` inputs (parameters ``[H, ...]``).

    States are in math orientation ``[N, H, *axes]``; returns the output
    ``[B, T, H, *out_axes]`` and the final states (one row per sequence).
    """
    decls = spec.input_decls
    v_any = next(t for n, t in inputs.items() if decls[n].time)
    B, T, H = v_any.shape[:3]
    dtype = torch.float64 if v_any.dtype == torch.float64 else torch.float32
    cast = {n: t.to(dtype) for n, t in inputs.items()}
    reads = sorted({n for n in walk(spec.output) if isinstance(n, Read)}, key=repr)
    seqs = _sequence_bounds(cu_seqlens, B, T)
    out_axes = spec.output.axes
    out = torch.zeros((B, T, H) + tuple(sizes[a] for a in out_axes), dtype=dtype, device=v_any.device)
    finals: dict[str, list[torch.Tensor]] = {name: [] for name, _ in spec.states}
    rows = []
    for n_seq, (b, start, end) in enumerate(seqs):
        states = {}
        for name, decl in spec.states:
            shape = (1, H) + tuple(sizes[a] for a in decl.axes)
            init = None if initial is None else initial.get(name)
            states[name] = (
                init[n_seq : n_seq + 1].to(dtype)
                if init is not None
                else torch.zeros(shape, dtype=dtype, device=v_any.device)
            )
        steps = []
        for t in range(start, end):
            env: dict[Node, torch.Tensor] = {}
            for name, decl in spec.inputs:
                x = cast[name]
                env[Input(name, decl.axes, decl.time)] = x[b : b + 1, t] if decl.time else _param_view(x)
            new = {name: _step_state(aff, states[name], env, sizes) for name, aff in spec.updates}
            for r in reads:
                env[r] = _read_value(r, states, new, env, sizes)
            steps.append(evaluate(spec.output, env, sizes))
            states = new
        if steps:
            rows.append((b, start, end, torch.cat(steps, 0)))
        for name in finals:
            finals[name].append(states[name])
    if rows:
        out = out.index_put(_row_index(rows, out.device), torch.cat([r[3] for r in rows], 0))
    return out, {name: torch.cat(parts, 0) for name, parts in finals.items()}
