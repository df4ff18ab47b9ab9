"""The one generic entry point every public op goes through.

Validation lives here once (not per model): shapes, dtypes, devices, gate signs,
``cu_seqlens``. Then either the reference interpreter runs the spec, or each core stage
of its normal form runs on a kernel strategy between PyTorch prologue / epilogue (the
epilogue as generated kernels, forward and backward, where ``lowering/epilogue.py`` fuses it;
an output ``S q + D ⊙ x`` needs none where the core's strategy adds the skip term ``D ⊙ x`` in
its read-out, as the scan does: :func:`_fuse_skip`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from scandsl import knobs
from scandsl._classify import Stage, is_static
from scandsl._core import CoreInputs, Shape
from scandsl._expr import Input, Node, Op, Read, evaluate
from scandsl._validate import check_call, initial_states
from scandsl.autotune import choose, usable_strategies
from scandsl.lowering import epilogue, epilogue_bwd, load_strategy

__all__ = ["apply", "OPTIONS"]

OPTIONS = ("scale", "initial_state", "output_final_state", "strategy", "cu_seqlens", "feature_map")


def apply(spec, args: Mapping[str, Any]):
    """Run ``spec`` on the public op's ``locals()``: model inputs plus the common options."""
    args = dict(args)
    opts = {k: args.pop(k) for k in OPTIONS if k in args}
    spec = spec.with_feature_map(opts.get("feature_map"))
    cu_seqlens = opts.get("cu_seqlens")
    checked = check_call(spec, args, cu_seqlens=cu_seqlens, strategy=opts.get("strategy", "auto"))
    inputs, sizes, n_seq, strategy = checked.tensors(args), checked.sizes, checked.n_seq, checked.strategy
    if spec.scaled is not None:
        scale = opts.get("scale")
        scale = sizes[spec.input_decls[spec.scaled].axes[0]] ** -0.5 if scale is None else float(scale)
    elif opts.get("scale") is not None:
        raise ValueError(f"scale: {spec.name} has no query to scale; pass scale=None")
    else:
        scale = 1.0
    initial = initial_states(spec, opts.get("initial_state"), sizes, n_seq, inputs)
    out_dtype = _out_dtype(spec, inputs)
    if strategy == "reference":
        o, finals = _run_reference(spec, inputs, sizes, initial, scale, cu_seqlens)
    else:
        o, finals = _run_kernels(spec, strategy, inputs, sizes, initial, scale, cu_seqlens, out_dtype)
    o = o.to(out_dtype)
    if not opts.get("output_final_state", False):
        return o, None
    return o, _api_states(spec, finals)


def _out_dtype(spec, inputs) -> torch.dtype:
    for name in ("v", "x"):
        if name in inputs:
            return inputs[name].dtype
    return next(t.dtype for n, t in inputs.items() if spec.input_decls[n].time)


def _api_states(spec, finals: Mapping[str, torch.Tensor]):
    """Math-orientation ``[N, H, V, K]`` -> API ``[N, H, K, V]`` (vectors stay ``[N, H, K]``)."""
    out = tuple(
        finals[name].transpose(-1, -2) if len(d.axes) == 2 else finals[name] for name, d in spec.states
    )
    return out[0] if len(out) == 1 else out


def _scaled_inputs(spec, inputs, scale: float) -> dict[str, torch.Tensor]:
    if spec.scaled is None or scale == 1.0:
        return dict(inputs)
    return {**inputs, spec.scaled: inputs[spec.scaled] * scale}


def _run_reference(spec, inputs, sizes, initial, scale, cu_seqlens):
    from scandsl.reference import run_reference

    return run_reference(spec, _scaled_inputs(spec, inputs, scale), sizes, initial, cu_seqlens)


# ----------------------------------------------------------------------------- kernels


class _Env(dict):
    """Leaf values for ``evaluate``; the scaled query is computed on its first use only.

    A core that reads the raw query folds ``scale`` into the kernel, and then no pass over q is
    spent unless an epilogue term needs the scaled value too (the fused epilogue scales it in
    its own load, from ``scaled``).
    """

    def __init__(self, values, scaled):
        super().__init__(values)
        self.scaled = dict(scaled)  # leaf -> (raw tensor, scale): its value is raw * scale

    def __missing__(self, node):
        if node not in self.scaled:
            raise KeyError(node)
        raw, scale = self.scaled[node]
        value = self[node] = raw * scale
        return value

    def __contains__(self, node) -> bool:
        return dict.__contains__(self, node) or node in self.scaled


def _leaf_env(spec, inputs: Mapping[str, torch.Tensor], scale: float) -> _Env:
    values, scaled = {}, {}
    for name, decl in spec.inputs:
        x = inputs[name]
        leaf = Input(name, decl.axes, decl.time)
        x = x if decl.time else x[None, None]
        if name == spec.scaled and scale != 1.0:
            scaled[leaf] = (x, scale)
        else:
            values[leaf] = x
    return _Env(values, scaled)


def _eval_operand(node: Node, env, sizes, lead: tuple[int, int, int], per_step: bool) -> torch.Tensor:
    """Evaluate an operand node as ``[B,T,H,*]`` (or ``[H,*]`` when the core takes it static)."""
    t = env[node] if node in env else evaluate(node, env, sizes)
    B, T, H = lead
    shape = tuple(sizes[a] for a in node.axes)
    if not per_step:
        return t.reshape(t.shape[-1 - len(shape) :]).expand((H,) + shape) if t.dim() else t.expand(H)
    return t.expand((B, T, H) + shape)


def _stage_inputs(
    stage: Stage, env, sizes, lead, scale: float, raw_q: Node | None, inputs, initial, cu_seqlens,
    keep_wide: bool = False,
):
    sig = stage.sig
    ops = {}
    core_scale = 1.0
    if isinstance(raw_q, Input) and stage.q == raw_q:
        core_scale = scale  # fold scale into the kernel instead of an extra pass over q
        ops["q"] = inputs[raw_q.name]
    for name, node in stage.operand_nodes().items():
        if name in ops:
            continue
        static = (name == "q" and sig.query_static) or (name == "k" and sig.key_static)
        static = static or (name == "gv" and sig.decay_static) or name == "A"
        ops[name] = _eval_operand(node, env, sizes, lead, per_step=not static)
    gated = _value_factors(stage)
    if gated is not None:  # v ⊙ vg: the strategy multiplies them, or _ungate below does
        ops["vg"] = _eval_operand(gated[1], env, sizes, lead, per_step=True)  # [B,T,H,V] or [B,T,H]
    cols = []
    for node in stage.values if gated is None else gated[:1]:
        col = _eval_operand(node, env, sizes, lead, per_step=True)
        cols.append(col if node.axes else col.unsqueeze(-1))
    v = (
        cols[0]
        if len(cols) == 1
        else torch.cat([c.to(torch.promote_types(c.dtype, cols[0].dtype)) for c in cols], -1)
    )
    init = None
    if initial is not None:
        parts = [initial[s] if initial[s].dim() == 4 else initial[s].unsqueeze(-2) for s in stage.states]
        state_dtype = torch.promote_types(v.dtype, torch.float32)  # fp32 state; fp64 stays exact
        # [N, H, K, V_total]; one state is the caller's tensor itself (no copy when contiguous fp32:
        # a decoding step reads and writes its state once, a copy would double that)
        stacked = parts[0] if len(parts) == 1 else torch.cat(parts, -2)
        init = stacked.transpose(-1, -2).contiguous().to(state_dtype)
    fused = len(stage.values) > 1
    return CoreInputs(
        q=ops["q"],
        k=ops["k"],
        v=v if v.is_contiguous() else v.contiguous(),
        g=ops.get("g"),
        gk=ops.get("gk"),
        gv=ops.get("gv"),
        A=ops.get("A"),
        beta=ops.get("beta"),
        vg=ops.get("vg"),
        keep_wide=keep_wide,
        scale=core_scale,
        initial_state=init,
        output_final_state=True,
        cu_seqlens=cu_seqlens,
        out_dtype=(
            torch.promote_types(v.dtype, torch.float32)
            if fused
            else torch.promote_types(v.dtype, ops["vg"].dtype) if gated is not None else None
        ),
    )


def _value_factors(stage: Stage) -> tuple[Node, Node] | None:
    """``(v, vg)`` when the stage's one value column is a product of a per-step vector on its axis
    and a per-step vector or scalar (Mamba's ``dt ⊙ x``, DeltaNet's ``β v``): a strategy whose
    ``value_gates`` takes that kind multiplies them in its kernels, which saves the product's
    ``[B, T, H, V]`` pass over memory (and its backward's)."""
    if len(stage.values) != 1:
        return None
    node = stage.values[0]
    if not (isinstance(node, Op) and node.fn == "mul" and len(node.axes) == 1):
        return None
    a, b = node.args
    if a.axes != node.axes:
        a, b = b, a
    if a.axes != node.axes or b.axes not in (node.axes, ()) or is_static(a) or is_static(b):
        return None
    return a, b


def _ungate(x: CoreInputs, sig, module) -> CoreInputs:
    """The value as one tensor for a strategy that does not take this kind of value gate."""
    if x.vg is None:
        return x
    kind = "vector" if x.vg.dim() == x.v.dim() else "scalar"
    if kind not in getattr(module, "value_gates", lambda sig: ())(sig):
        x.v, x.vg = x.value().contiguous(), None
    return x


def source_options(spec, stage: Stage, module) -> dict[str, bool]:
    """The variant of ``module.generate_source`` an op call runs for ``stage`` (``value_gated``,
    ``skip``, ``shared_gate``: the kernels multiply the value's two factors, add the skip term,
    read the value's gate as the decay's), decided from the spec alone: :func:`_fuse_skip` and
    :func:`_share_gate` take ``skip`` and ``shared_gate`` from here, and ``value_gated`` is what
    :func:`_ungate` leaves of the tensors; ``scandsl show --strategy`` prints that variant."""
    gated = _value_factors(stage)
    kinds = getattr(module, "value_gates", lambda sig: ())(stage.sig)
    value_gated = gated is not None and ("vector" if gated[1].axes else "scalar") in kinds
    term = epilogue.skip_term(spec.output, stage.reads()[0]) if len(stage.values) == 1 else None
    takes_skip = getattr(module, "takes_skip", lambda sig: False)(stage.sig)
    if term is None or not takes_skip:
        skip = False
    elif value_gated:
        assert gated is not None
        skip = term[1] == gated[0] or term[1] == gated[1]
    else:
        skip = stage.values[0] == term[1]
    gv = stage.operand_nodes().get("gv")
    shared = value_gated and getattr(module, "shares_gate", lambda sig: False)(stage.sig)
    shared = (
        shared and gated is not None and gv in gated and not (skip and term is not None and term[1] == gv)
    )
    return {"value_gated": value_gated, "skip": skip, "shared_gate": bool(shared)}


def _fuse_skip(spec, stage: Stage, x: CoreInputs, opts: dict[str, bool], env, sizes, lead) -> bool:
    """Hand the output's skip term ``D ⊙ x`` (:func:`epilogue.skip_term`) to the core, whose
    output is then the op's (no epilogue kernel, forward or backward), where
    :func:`source_options` says the strategy's kernels take it: ``x`` is the value the kernels
    load, the value itself or one factor of ``v ⊙ vg`` (mamba's ``dt ⊙ x``: the factors commute,
    so ``x`` becomes ``v``). ``opts``: :func:`source_options` of the stage's strategy."""
    if not opts["skip"]:
        return False
    assert opts["value_gated"] == (x.vg is not None)  # as _ungate left the value
    term = epilogue.skip_term(spec.output, stage.reads()[0])
    gated = _value_factors(stage)
    assert term is not None
    d, skip_x = term
    if gated is not None and x.vg is not None and gated[1] == skip_x:  # vg is [B,T,H,V] as v is
        x.v, x.vg = x.vg, x.v
    x.D = _eval_operand(d, env, sizes, lead, per_step=False).contiguous()  # [H, V]
    return True


def _share_gate(stage: Stage, x: CoreInputs, opts: dict[str, bool]) -> None:
    """Hand the core the decay's gate as the value's gate itself (``x.vg is x.gv``) where
    :func:`source_options` says the kernels read it once (mamba's ``dt ⊙ x`` and
    ``exp(−dt ⊗ e^{A_log})``). The value's factors commute, so a gate that came as ``x.v`` moves
    to ``x.vg``; with a skip term :func:`_fuse_skip` has put the term's factor in ``x.v`` already
    (``source_options`` shares only the other one)."""
    if not opts["shared_gate"]:
        return
    gated = _value_factors(stage)
    assert gated is not None and x.vg is not None
    if not opts["skip"] and gated[1] != stage.operand_nodes()["gv"]:
        x.v, x.vg = x.vg, x.v
    x.vg = x.gv


def _run_kernels(spec, strategy: str, inputs, sizes, initial, scale, cu_seqlens, out_dtype):
    nf = spec.normal_form
    raw_q = Input(spec.scaled, spec.input_decls[spec.scaled].axes, True) if spec.scaled else None
    v_any = next(t for n, t in inputs.items() if spec.input_decls[n].time)
    lead = tuple(v_any.shape[:3])
    env = _leaf_env(spec, inputs, scale if spec.scaled else 1.0)
    finals: dict[str, torch.Tensor] = {}
    output = None  # the op's output, when a core's read-out computed all of it
    for stage in nf.stages:
        x = _stage_inputs(
            stage, env, sizes, lead, scale, raw_q, inputs, initial, cu_seqlens, spec.branches_on_readout
        )
        x = _contiguous(x)
        chosen, config = _choose(spec, stage, strategy, x)
        module = load_strategy(chosen)
        x = _ungate(x, stage.sig, module)
        opts = source_options(spec, stage, module)  # once a stage: the op's host path
        skip = _fuse_skip(spec, stage, x, opts, env, sizes, lead)
        _share_gate(stage, x, opts)
        if skip or (
            isinstance(spec.output, Read) and len(stage.values) == 1 and spec.output == stage.reads()[0]
        ):
            x.out_dtype = out_dtype  # the output is this read-out: written in its final dtype at once
        o, final = module.run(stage.sig, x, config)
        if skip:
            output = o
        col = 0
        for state, read, node in zip(stage.states, stage.reads(), stage.values):
            width = sizes[node.axes[0]] if node.axes else 1
            piece = o[..., col : col + width]
            env[read] = piece if node.axes else piece.squeeze(-1)
            fs = final[..., col : col + width].transpose(-1, -2)  # [N, H, V, K] math orientation
            finals[state] = fs if node.axes else fs.squeeze(-2)
            col += width
    if output is not None:
        return output, finals
    fused = _fused_epilogue(spec, env, sizes, out_dtype)
    return (evaluate(spec.output, env, sizes) if fused is None else fused), finals


def _fused_epilogue(spec, env: _Env, sizes, out_dtype) -> torch.Tensor | None:
    """The output expression as generated kernels (lowering/epilogue.py) when kernels run here:
    the forward alone without gradients, else with the generated backward as an autograd
    function (lowering/epilogue_bwd.py); ``None`` leaves it to PyTorch."""
    leaves = epilogue.plan(spec.output)
    if leaves is None:
        return None
    values, scaled = {}, {}
    for lf in leaves:
        if lf.node in env.scaled and not dict.__contains__(env, lf.node):
            values[lf.node], scaled[lf.node] = env.scaled[lf.node]  # scaled in the kernel
        else:
            values[lf.node] = env[lf.node]
    if next(iter(values.values())).device.type != "cuda" and not knobs.interpret():
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in values.values()):
        return epilogue_bwd.apply(spec.output, values, scaled, sizes, out_dtype)
    return epilogue.run(spec.output, values, scaled, sizes, out_dtype)


def _contiguous(x: CoreInputs) -> CoreInputs:
    for name in ("q", "k", "v", "g", "gk", "gv", "A", "beta", "vg", "D"):
        t = getattr(x, name)
        if t is not None and not t.is_contiguous():
            setattr(x, name, t.contiguous())
    return x


def _choose(spec, stage: Stage, strategy: str, x: CoreInputs) -> tuple[str, dict | None]:
    """An explicit strategy as asked; for "auto", the autotune cache or its heuristic."""
    if strategy != "auto":
        return strategy, None
    legal = usable_strategies(stage.sig, spec.normal_form.kernel_strategies, load_strategy)
    return choose(spec.key, stage.sig, Shape(x.B, x.T, x.H, x.K, x.V), x.v.dtype, legal)
