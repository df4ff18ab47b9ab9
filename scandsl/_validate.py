"""Input validation, once for every op: errors name the argument, what was expected and
what arrived, and how to fix it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from scandsl import knobs
from scandsl._seqlens import host_bounds
from scandsl.autotune import usable_strategies
from scandsl.lowering import load_strategy

__all__ = [
    "check_call",
    "Checked",
    "check_inputs",
    "check_strategy",
    "initial_states",
    "STRATEGIES",
    "MAX_KERNEL_DIM",
]

STRATEGIES = ("auto", "reference", "sequential", "scan", "chunk")
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_KERNEL_DIM = 256


def _fail(arg: str, expected: str, got: str, fix: str = "") -> ValueError:
    msg = f"{arg}: expected {expected}, got {got}"
    return ValueError(msg + (f"; {fix}" if fix else ""))


@dataclass(frozen=True, slots=True)
class Checked:
    """What validating one call signature established; shared between calls (read-only)."""

    sizes: Mapping[str, int]  # axis name -> size
    n_seq: int  # sequences (B, or len(cu_seqlens) - 1 of the call that made it)
    strategy: str  # the strategy option, checked: "auto", "reference" or a legal, built strategy
    filled: Mapping[str, torch.Tensor]  # zeros for the optional inputs the call left out
    constrained: tuple[tuple[str, Any], ...]  # (name, decl) of inputs with value constraints

    def tensors(self, args: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The call's inputs in declaration order (given ones, then zeros for omitted ones), after
        the value checks the SCANDSL_CHECK_VALUES knob asks for."""
        for name, decl in self.constrained:
            _check_values(name, decl, args[name])
        given = {n: t for n, t in args.items() if t is not None}
        return {**given, **self.filled} if self.filled else given


_CHECKED: dict[tuple, Checked] = {}
_CHECKED_MAX = 512


def _arg_key(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return (x.shape, x.dtype, x.device)
    return None if x is None else (type(x), id(x))  # refused below, never cached as valid


def check_call(spec, args: Mapping[str, Any], *, cu_seqlens, strategy: Any) -> Checked:
    """``check_inputs`` and ``check_strategy`` once per call signature (spec, strategy, and each
    input's shape, dtype and device), the way the op meets it again in a training loop: what
    they establish does not depend on values. What does is checked on every call: the value
    constraints (``Checked.tensors``) and ``cu_seqlens`` (memoised per tensor and version)."""
    key = (
        spec,
        strategy,
        cu_seqlens is None,
        torch.is_inference_mode_enabled(),  # the zeros in ``filled`` are inference tensors under it
        tuple((n, _arg_key(x)) for n, x in args.items()),
    )
    try:
        hit = _CHECKED.get(key)
        cacheable = True
    except TypeError:  # an unhashable strategy: the checks below say what is wrong with it
        hit, cacheable = None, False
    if hit is not None:
        if cu_seqlens is None:
            return hit
        v_any = next(t for n, t in args.items() if t is not None and spec.input_decls[n].time)
        B, T = v_any.shape[:2]
        n_seq = check_cu_seqlens(cu_seqlens, B, T, v_any.device)
        return hit if n_seq == hit.n_seq else replace(hit, n_seq=n_seq)
    tensors, sizes, n_seq = check_inputs(spec, args, cu_seqlens=cu_seqlens, strategy=strategy)
    checked = Checked(
        sizes=sizes,
        n_seq=n_seq,
        strategy=check_strategy(spec, strategy),
        filled={n: t for n, t in tensors.items() if args.get(n) is None},
        constrained=tuple(
            (n, d)
            for n, d in spec.inputs
            if args.get(n) is not None and (d.is_log_gate or d.is_positive or d.is_nonneg)
        ),
    )
    if cacheable:
        if len(_CHECKED) >= _CHECKED_MAX:  # shapes that change every call must not grow it without end
            _CHECKED.clear()
        _CHECKED[key] = checked
    return checked


def check_inputs(spec, args: Mapping[str, Any], *, cu_seqlens, strategy: str):
    """Check every declared input; returns (tensors, axis sizes, number of sequences)."""
    decls = spec.input_decls
    unknown = set(args) - set(decls)
    if unknown:
        raise TypeError(f"{spec.name}() got unexpected arguments {sorted(unknown)}")
    tensors: dict[str, torch.Tensor] = {}
    lead: tuple[int, int, int] | None = None
    device = None
    sizes: dict[str, int] = {}
    for name, decl in spec.inputs:
        x = args.get(name)
        if x is None:
            if decl.is_optional:
                continue
            raise _fail(name, f"a tensor of shape {decl.shape_doc()}", "None")
        if not isinstance(x, torch.Tensor):
            raise _fail(name, "a torch.Tensor", type(x).__name__)
        if not x.is_floating_point():
            raise _fail(name, "a floating-point tensor", str(x.dtype))
        want = (3 if decl.time else 1) + len(decl.axes)
        if x.dim() != want:
            raise _fail(name, f"{want} dims {decl.shape_doc()}", f"shape {tuple(x.shape)}")
        if device is None:
            device = x.device
        elif x.device != device:
            raise _fail(name, f"a tensor on {device} like the other inputs", str(x.device))
        if decl.time:
            if lead is None:
                lead = tuple(x.shape[:3])  # type: ignore[assignment]
            elif tuple(x.shape[:3]) != lead:
                raise _fail(name, f"[B,T,H] = {list(lead)} like the other inputs", f"{list(x.shape[:3])}")
            tail = x.shape[3:]
        else:
            if lead is not None and x.shape[0] != lead[2]:
                raise _fail(name, f"H = {lead[2]} heads first", f"shape {tuple(x.shape)}")
            tail = x.shape[1:]
        for axis, n in zip(decl.axes, tail):
            if sizes.setdefault(axis, n) != n:
                raise _fail(
                    name, f"{axis} = {sizes[axis]} (from the other inputs)", f"{n} in shape {tuple(x.shape)}"
                )
        _check_values(name, decl, x)
        tensors[name] = x
    if lead is None:
        raise ValueError(f"{spec.name}: no per-step input was given")
    B, T, H = lead
    for name, decl in spec.inputs:
        if not decl.time and name in tensors and tensors[name].shape[0] != H:
            raise _fail(name, f"H = {H} heads first", f"shape {tuple(tensors[name].shape)}")
    if T < 1:
        raise _fail("T", "at least one time step", "T = 0")
    _fill_optional(spec, tensors, sizes, H, device)
    if strategy not in ("reference",):
        _check_kernel_inputs(spec, tensors, sizes, strategy)
    n_seq = B if cu_seqlens is None else check_cu_seqlens(cu_seqlens, B, T, device)
    return tensors, sizes, n_seq


def _check_values(name: str, decl, x: torch.Tensor) -> None:
    # one fused reduction per constrained input; on a GPU its answer is a device-to-host sync,
    # so there it runs only when SCANDSL_CHECK_VALUES=1 asks (docs/knobs.md)
    if not knobs.check_values(x.device):
        return
    if decl.is_log_gate and bool((x > 0).any()):
        raise _fail(
            name,
            "a log-space decay (all values <= 0)",
            f"max {x.max().item():.4g}",
            "pass log(gate), e.g. F.logsigmoid(x)",
        )
    if decl.is_positive and bool((x <= 0).any()):
        raise _fail(name, "positive values", f"min {x.min().item():.4g}")
    if decl.is_nonneg and bool((x < 0).any()):
        raise _fail(name, "non-negative values", f"min {x.min().item():.4g}")


def _fill_optional(spec, tensors, sizes, H, device) -> None:
    ref = next(iter(tensors.values()))
    for name, decl in spec.inputs:
        if name not in tensors:
            shape = ((1, 1, H) if decl.time else (H,)) + tuple(sizes[a] for a in decl.axes)
            tensors[name] = torch.zeros(shape, dtype=ref.dtype, device=device)


def _check_kernel_inputs(spec, tensors, sizes, strategy) -> None:
    for name, t in tensors.items():
        if t.dtype not in KERNEL_DTYPES:
            raise _fail(
                name,
                "float32, bfloat16 or float16 for kernel strategies",
                str(t.dtype),
                "use strategy='reference' for float64",
            )
    for axis, n in sizes.items():
        if n > MAX_KERNEL_DIM:
            raise _fail(f"feature size {axis}", f"at most {MAX_KERNEL_DIM}", str(n))


def check_cu_seqlens(cu: Any, B: int, T: int, device) -> int:
    if not isinstance(cu, torch.Tensor):
        raise _fail("cu_seqlens", "a LongTensor [N+1]", type(cu).__name__)
    if cu.dtype not in (torch.int64, torch.int32):
        raise _fail("cu_seqlens", "an integer tensor (int64 or int32)", str(cu.dtype))
    if cu.dim() != 1 or cu.numel() < 2:
        raise _fail("cu_seqlens", "a 1-D tensor [N+1] with N >= 1", f"shape {tuple(cu.shape)}")
    if cu.device != device:
        raise _fail("cu_seqlens", f"a tensor on {device} like the inputs", str(cu.device))
    if B != 1:
        raise _fail("B", "B == 1 when cu_seqlens is given (pack sequences along T)", f"B = {B}")
    vals = host_bounds(cu)  # memoised per tensor: one device sync, not one a call
    if vals[0] != 0:
        raise _fail("cu_seqlens", "to start at 0", f"cu_seqlens[0] = {vals[0]}")
    if vals[-1] != T:
        raise _fail("cu_seqlens", f"to end at T = {T}", f"cu_seqlens[-1] = {vals[-1]}")
    if any(b < a for a, b in zip(vals, vals[1:])):
        raise _fail("cu_seqlens", "non-decreasing offsets", str(list(vals)))
    return len(vals) - 1


def check_strategy(spec, strategy: Any) -> str:
    if strategy not in STRATEGIES:
        raise _fail("strategy", f"one of {STRATEGIES}", repr(strategy))
    legal = spec.legal_strategies
    if strategy == "auto":
        built = [s for s in legal[1:] if _built_for(spec, s)]
        return "auto" if built else "reference"
    if strategy not in legal:
        why = spec.normal_form.reason or f"its normal form ({spec.normal_form.describe()}) does not allow it"
        raise ValueError(
            f"strategy: {strategy!r} is not legal for {spec.name}: {why}. Legal strategies: {legal}"
        )
    if strategy != "reference" and not _built_for(spec, strategy):
        module = load_strategy(strategy)
        reasons = (
            "not built yet in this install"
            if module is None
            else "; ".join(r for st in spec.normal_form.stages if (r := module.supports(st.sig)))
        )
        raise NotImplementedError(f"strategy: {strategy!r} for {spec.name}: {reasons}")
    return strategy


def _built_for(spec, strategy: str) -> bool:
    """Whether ``strategy``'s kernels are built and accept every stage of ``spec`` (memoised)."""
    return all(usable_strategies(st.sig, (strategy,), load_strategy) for st in spec.normal_form.stages)


def initial_states(spec, given: Any, sizes, n_seq: int, inputs) -> dict[str, torch.Tensor] | None:
    """User ``initial_state`` (API layout) -> math-orientation tensors ``[N, H, *axes]``."""
    if given is None:
        return None
    names = [n for n, _ in spec.states]
    parts = given if isinstance(given, tuple | list) else (given,)
    if len(parts) != len(names):
        raise _fail("initial_state", f"{len(names)} tensors ({', '.join(names)})", f"{len(parts)}")
    H = next(t for n, t in inputs.items() if spec.input_decls[n].time).shape[2]
    device = next(iter(inputs.values())).device
    out = {}
    for name, t in zip(names, parts):
        axes = spec.state_decls[name].axes
        api = tuple(sizes[a] for a in reversed(axes))  # API layout is the transpose
        want = (n_seq, H) + api
        if not isinstance(t, torch.Tensor):
            raise _fail(f"initial_state[{name}]", f"a tensor {list(want)}", type(t).__name__)
        if tuple(t.shape) != want:
            raise _fail(
                f"initial_state[{name}]", f"shape {list(want)} (float32, [N,H,K,V])", f"{list(t.shape)}"
            )
        if t.device != device:
            raise _fail(f"initial_state[{name}]", f"a tensor on {device}", str(t.device))
        out[name] = t.transpose(-1, -2) if len(axes) == 2 else t
    return out
