"""Benchmark inputs for any op, made from its spec's input declarations.

Values are fresh random draws in the ranges the models use (never zeros: they hide
unwritten outputs and can run faster than real data): log-gates ``logsigmoid(x + 2)``
(a decay near 0.88 a step), positive step sizes ``softplus(x − 2)``, non-negative slot
weights as a softmax over the slot axis, delta-rule keys (and queries) L2-normalised.
Per-step feature tensors (``q``, ``k``, ``v``, slot weights) take the benchmark dtype;
gates and per-head parameters stay float32, as models keep them.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from scandsl._core import Shape

__all__ = ["op_spec", "make_op_inputs", "state_elements", "SLOTS", "POSITIVE_QK"]

SLOTS = 64  # M, the slot count of abc / gsa
# rows that divide by z·q: their models feed positive features, which keeps z·q away from 0
# (random signed q, k make the quotient ill-conditioned, and any bf16 check meaningless)
POSITIVE_QK = frozenset({"gated_rfa"})


def op_spec(op: str):
    """(public function, spec) of a taxonomy op."""
    from scandsl import ops

    fn, specs = ops.TAXONOMY[op]
    return fn, specs[0]


def _sizes(shape: Shape, slots: int) -> dict[str, int]:
    return {"K": shape.K, "V": shape.V, "M": slots}


def make_op_inputs(
    op: str,
    shape: Shape,
    dtype: torch.dtype,
    device: torch.device | str,
    seed: int,
    *,
    slots: int = SLOTS,
) -> dict[str, torch.Tensor]:
    """Keyword tensors for ``scandsl.ops.<op>`` (optional inputs with a ``None`` default that the
    op fills in itself, like retention's ``gamma``, are left to that default)."""
    fn, spec = op_spec(op)
    params = inspect.signature(fn).parameters
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(
        seed
    )  # drawn where they live: 64K-token sweeps are large
    sizes = _sizes(shape, slots)
    delta = any(name == "beta" for name, _ in spec.inputs)
    out: dict[str, torch.Tensor] = {}
    for name, decl in spec.inputs:
        p = params.get(name)
        if p is not None and p.default is None and not decl.time and name != "D":
            continue  # e.g. retention's gamma: the op's own default is the model's
        lead = (shape.B, shape.T, shape.H) if decl.time else (shape.H,)
        dims = lead + tuple(sizes[a] for a in decl.axes)
        x = torch.randn(dims, generator=gen, dtype=torch.float32, device=device)
        feature = decl.time and bool(decl.axes) and not decl.is_log_gate
        if decl.is_log_gate:
            x = F.logsigmoid(x + 2.0)
        elif decl.is_positive:
            x = F.softplus(x - 2.0)
        elif decl.is_nonneg:
            x = torch.softmax(x, -1) if decl.axes else x.abs()
        elif name == "beta":
            x = torch.sigmoid(x)
        elif name == "A_log":
            x = torch.log(
                torch.rand(dims, generator=gen, device=device) * 15 + 1
            )  # A in [1, 16], Mamba's S4D-real range
        elif delta and name in ("q", "k"):
            x = F.normalize(x, dim=-1)
        elif op in POSITIVE_QK and name in ("q", "k"):
            x = F.elu(x) + 1.0  # the linear-transformer feature map
        out[name] = x.to(dtype=dtype if feature else torch.float32)
    return out


def state_elements(op: str, shape: Shape, *, slots: int = SLOTS) -> int:
    """Elements of all recurrent states of one head (K·V for most rows; abc/gsa have two)."""
    _, spec = op_spec(op)
    sizes = _sizes(shape, slots)
    total = 0
    for _, decl in spec.states:
        n = 1
        for a in decl.axes:
            n *= sizes[a]
        total += n
    return total
