"""Case factories: a public op (ours per strategy + its anchors), or a bare core recurrence.

``op_case`` benchmarks ``scandsl.ops.<op>`` end to end (prologue, kernels, epilogue) against
its ``strategy="reference"`` on float32 copies of the same inputs. ``core_case`` benchmarks
one strategy module on a ``CoreSig`` against ``core_reference`` — what kernel engineers
use before a spec exists, and what the CPU tests drive with fake strategies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import ModuleType

import torch

from scandsl._core import CoreInputs, CoreSig, Shape, core_reference
from scandsl.testing import random_core_inputs

from ._anchors import Opts, anchors_for
from ._floor import tensor_bytes
from ._harness import Case, Impl
from ._inputs import SLOTS, make_op_inputs, op_spec, state_elements

__all__ = ["op_case", "core_case"]


def _leaf(t: torch.Tensor, grad: bool, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = t.detach().to(dtype) if dtype is not None else t.detach()
    return t.clone().requires_grad_(grad and t.is_floating_point())


@dataclasses.dataclass
class _OpInputs:
    args: dict[str, torch.Tensor]
    init: torch.Tensor | None  # [B, H, K, V] float32 (single-state rows), or None
    B: int
    T: int
    cu: torch.Tensor | None = None  # cu_seqlens of a packed batch (B == 1)

    def sliced(self, n: int) -> _OpInputs:
        args = {
            k: (v[:, :n] if v.dim() >= 3 and tuple(v.shape[:2]) == (self.B, self.T) else v)
            for k, v in self.args.items()
        }
        # the first n tokens of a packed batch: the same documents, cut at n (some become empty)
        cu = None if self.cu is None else self.cu.clamp(max=n)
        return _OpInputs(args, self.init, self.B, n, cu)


def random_cu_seqlens(T: int, docs: int, seed: int, device) -> torch.Tensor:
    """``docs`` documents of random lengths (at least 1) packed into ``T`` tokens."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    cuts = torch.randperm(T - 1, generator=gen)[: docs - 1].sort().values + 1
    return torch.cat([torch.tensor([0]), cuts, torch.tensor([T])]).to(device)


def op_case(
    op: str,
    shape: Shape,
    dtype: torch.dtype = torch.bfloat16,
    *,
    strategies: tuple[str, ...] = ("chunk",),
    anchor_kind: str | None = "chunk",
    modes: tuple[str, ...] = ("fwd", "fwd_bwd"),
    decode: bool = False,
    name: str | None = None,
    group: str = "",
    x: float | None = None,
    slots: int = SLOTS,
    docs: int | None = None,
) -> Case:
    """``scandsl.ops.<op>`` per strategy, plus the anchors of ``anchor_kind`` for that op.

    ``decode``: a one-step call from a random initial state that returns the new state
    (what generation does each token). ``docs``: a packed batch (B must be 1) of that many
    documents of random lengths, passed as ``cu_seqlens``.
    """
    if docs is not None and shape.B != 1:
        raise ValueError(f"docs: a packed batch needs B == 1, got B={shape.B}")
    if docs is not None and anchor_kind is not None:
        raise ValueError("docs: packed batches are timed against our own dense run; pass anchor_kind=None")
    fn, spec = op_spec(op)
    scale = shape.K**-0.5 if spec.scaled is not None else None
    with_state = decode

    def make_inputs(seed: int, device: torch.device) -> _OpInputs:
        args = make_op_inputs(op, shape, dtype, device, seed, slots=slots)
        init = None
        if with_state:
            gen = torch.Generator(device="cpu").manual_seed(seed + 1)
            init = (torch.randn(shape.B, shape.H, shape.K, shape.V, generator=gen) * 0.5).to(device)
        cu = None if docs is None else random_cu_seqlens(shape.T, docs, seed + 2, device)
        return _OpInputs(args, init, shape.B, shape.T, cu)

    def call(inp: _OpInputs, args: dict, strategy: str):
        return fn(**args, initial_state=inp.init, output_final_state=decode, strategy=strategy,
                  cu_seqlens=inp.cu)  # fmt: skip

    def ours(strategy: str):
        def prepare(inp: _OpInputs, grad: bool):
            args = {k: _leaf(v, grad) for k, v in inp.args.items()}
            return (lambda: call(inp, args, strategy)), {k: v for k, v in args.items() if v.requires_grad}

        return Impl(f"ours.{strategy}", "ours", prepare)

    def anchor(a):
        def prepare(inp: _OpInputs, grad: bool):
            opts = Opts(scale=scale, initial_state=inp.init, output_final_state=decode, requires_grad=grad)
            run, leaves = a.prepare(inp.args, opts)
            return run, {f"anchor{i}": t for i, t in enumerate(leaves)}

        return Impl(a.name, "anchor", prepare)

    def reference(inp: _OpInputs):
        args = {k: v.detach().float() for k, v in inp.args.items()}
        with torch.no_grad():
            return fn(**args, initial_state=inp.init, output_final_state=True, strategy="reference",
                      cu_seqlens=inp.cu)  # fmt: skip

    def reference_grads(inp: _OpInputs, do: torch.Tensor) -> dict[str, torch.Tensor]:
        args = {k: _leaf(v, True, torch.float32) for k, v in inp.args.items()}
        o, _ = fn(**args, initial_state=inp.init, output_final_state=False, strategy="reference",
                  cu_seqlens=inp.cu)  # fmt: skip
        o.backward(do)
        return {k: v.grad for k, v in args.items() if v.grad is not None}

    impls = [ours(s) for s in strategies]
    if anchor_kind is not None:
        impls += [anchor(a) for a in anchors_for(op, anchor_kind)]
    return Case(
        name=name or f"{op} B{shape.B} T{shape.T} H{shape.H} K{shape.K} V{shape.V}",
        op=op,
        shape=shape,
        dtype=dtype,
        impls=impls,
        make_inputs=make_inputs,
        reference=reference,
        slice_T=lambda inp, n: inp.sliced(n),
        reference_grads=reference_grads,
        input_bytes=lambda inp: tensor_bytes(list(inp.args.values()), inp.init),
        state_elems=state_elements(op, shape, slots=slots),
        modes=modes,
        group=group,
        x=x,
        meta={**({"decode": decode} if decode else {}), **({"docs": docs} if docs else {})},
    )


_PER_STEP = ("q", "k", "v", "g", "gk", "gv", "beta")


def core_case(
    sig: CoreSig,
    shape: Shape,
    dtype: torch.dtype,
    *,
    strategies: tuple[str, ...],
    loader: Callable[[str], ModuleType | None],
    name: str,
    modes: tuple[str, ...] = ("fwd", "fwd_bwd"),
    configs: dict[str, dict | None] | None = None,
) -> Case:
    """One strategy module per entry of ``strategies`` (``configs[s]`` or its default) vs ``core_reference``."""
    configs = configs or {}

    def make_inputs(seed: int, device: torch.device) -> CoreInputs:
        return random_core_inputs(
            sig, B=shape.B, T=shape.T, H=shape.H, K=shape.K, V=shape.V, dtype=dtype, device=device, seed=seed
        )

    def sliced(x: CoreInputs, n: int) -> CoreInputs:
        cut = {}
        for f in _PER_STEP:
            t = getattr(x, f)
            if t is not None and t.dim() >= 3 and t.shape[1] == x.T and not (f == "gv" and sig.decay_static):
                if not ((f == "q" and sig.query_static) or (f == "k" and sig.key_static)):
                    cut[f] = t[:, :n]
        return dataclasses.replace(x, **cut)

    def leaves_of(x: CoreInputs, grad: bool, dtype_=None) -> CoreInputs:
        fresh = {n: _leaf(t, grad, dtype_ if t.dtype != torch.float32 else None)
                 for n, t in x.tensors().items() if n != "cu_seqlens"}  # fmt: skip
        return dataclasses.replace(x, **fresh)

    def ours(strategy: str):
        def prepare(x: CoreInputs, grad: bool):
            mod = loader(strategy)
            if mod is None:
                raise RuntimeError(f"strategy {strategy!r} is not built")
            xx = leaves_of(x, grad)
            cfg = configs.get(strategy)
            leaves = {n: t for n, t in xx.tensors().items() if t.requires_grad}
            return (lambda: mod.run(sig, xx, cfg)), leaves

        return Impl(f"ours.{strategy}", "ours", prepare)

    def reference(x: CoreInputs):
        with torch.no_grad():
            return core_reference(
                sig, dataclasses.replace(leaves_of(x, False, torch.float32), out_dtype=torch.float32)
            )

    def reference_grads(x: CoreInputs, do: torch.Tensor):
        xx = dataclasses.replace(leaves_of(x, True, torch.float32), out_dtype=torch.float32)
        o, _ = core_reference(sig, xx)
        o.backward(do)
        return {n: t.grad for n, t in xx.tensors().items() if t.grad is not None}

    return Case(
        name=name,
        op=f"core:{sig.describe()}",
        shape=shape,
        dtype=dtype,
        impls=[ours(s) for s in strategies],
        make_inputs=make_inputs,
        reference=reference,
        slice_T=sliced,
        reference_grads=reference_grads,
        input_bytes=lambda x: tensor_bytes(*x.tensors().values()),
        state_elems=shape.K * shape.V,
        modes=modes,
    )
