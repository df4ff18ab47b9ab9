"""The normal form computes the spec: every row, run through its core stages with the core
reference loop standing in for a kernel, equals the spec interpreter (float64)."""

from __future__ import annotations

import types

import pytest
import scandsl.lowering as lowering
import torch
from test_reference_taxonomy import case

import scandsl._entry as entry
import scandsl._validate as validate
from scandsl import ops
from scandsl._core import Decay, Readout, Transition, core_reference

EXPECTED = {
    "linear_attn": [("none", "identity", "after", 2)],
    "deltanet": [("none", "delta", "after", 1)],
    "gated_rfa": [("scalar", "identity", "after", 2)],
    "s4": [("channel", "identity", "after", 1)],
    "abc": [("none", "identity", "after", 1)] * 2,
    "dfw": [("outer", "identity", "after", 1)],
    "retention": [("scalar", "identity", "after", 1)],
    "mamba": [("channel", "identity", "after", 1)],
    "gla": [("key", "identity", "after", 1)],
    "rwkv6": [("key", "identity", "before", 1)],
    "hgrn2": [("key", "identity", "after", 1)],
    "mlstm": [("scalar", "identity", "after", 2)],
    "mamba2": [("scalar", "identity", "after", 1)],
    "gsa": [("value", "identity", "after", 1), ("key", "identity", "after", 1)],
    "gated_deltanet": [("scalar", "delta", "after", 1)],
}


@pytest.mark.parametrize("name", list(ops.TAXONOMY))
def test_classification(name):
    spec = ops.TAXONOMY[name][1][-1]
    got = [
        (s.sig.decay.value, s.sig.transition.value, s.sig.readout.value, len(s.states))
        for s in spec.normal_form.stages
    ]
    assert got == EXPECTED[name]
    legal = set(spec.legal_strategies)
    assert {"reference", "sequential"} <= legal
    assert ("chunk" in legal) == (name not in ("mamba", "s4"))
    assert ("scan" in legal) == (name not in ("deltanet", "gated_deltanet"))


def _fake_strategy():
    return types.SimpleNamespace(supports=lambda sig: None, run=lambda sig, x, config: core_reference(sig, x))


@pytest.fixture
def core_loop_as_kernel(monkeypatch):
    fake = _fake_strategy()
    monkeypatch.setattr(lowering, "load_strategy", lambda name: fake)
    monkeypatch.setattr(entry, "load_strategy", lambda name: fake)
    monkeypatch.setattr(validate, "load_strategy", lambda name: fake)
    # the stand-in kernel is exact, so let float64 through to compare at 1e-10
    monkeypatch.setattr(validate, "KERNEL_DTYPES", validate.KERNEL_DTYPES + (torch.float64,))


@pytest.mark.parametrize("name", list(ops.TAXONOMY))
def test_stages_compute_the_spec(name, core_loop_as_kernel):
    gen = torch.Generator().manual_seed(7)
    kw, init, _, sc = case(name, gen)
    fn = ops.TAXONOMY[name][0]
    init_arg = init[0] if len(init) == 1 else init
    common = dict(scale=sc, initial_state=init_arg, output_final_state=True)
    o_ref, s_ref = fn(**kw, **common, strategy="reference")
    o, s = fn(**kw, **common, strategy="sequential")
    assert (o - o_ref).abs().max() <= 1e-10 * o_ref.abs().max()
    for a, b in zip((s,) if len(init) == 1 else s, (s_ref,) if len(init) == 1 else s_ref):
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-10 * b.abs().max()
    leaves = [t for t in list(kw.values()) + list(init) if isinstance(t, torch.Tensor) and t.requires_grad]
    w = torch.randn_like(o)
    ga = torch.autograd.grad((o * w).sum(), leaves, allow_unused=True)
    gb = torch.autograd.grad((o_ref * w).sum(), leaves, allow_unused=True)
    for a, b in zip(ga, gb):
        if b is not None:
            assert (a - b).abs().max() <= 1e-9 * max(1.0, b.abs().max().item())


def test_enums_are_closed():
    assert {d.value for d in Decay} == {"none", "scalar", "key", "value", "outer", "channel"}
    assert {t.value for t in Transition} == {"identity", "delta"}
    assert {r.value for r in Readout} == {"after", "before"}


class _LargestTensor(torch.overrides.TorchFunctionMode):
    """Records the element count of the largest tensor any torch call returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("name", list(ops.TAXONOMY))
def test_prologue_and_epilogue_stay_token_sized(name, core_loop_as_kernel):
    """Around the kernels, nothing is bigger than an input, a state or the output: a read-out like
    rwkv6's bonus ``(v (u ⊙ k)ᵀ) q`` is evaluated as ``v ((u ⊙ k) · q)``, never as the per-token
    [V, K] outer product (16 GiB at the standard benchmark shape)."""
    gen = torch.Generator().manual_seed(3)
    kw, init, _, sc = case(name, gen)
    fn = ops.TAXONOMY[name][0]
    init_arg = init[0] if len(init) == 1 else init
    with torch.no_grad():
        o, s = fn(**kw, scale=sc, initial_state=init_arg, output_final_state=True, strategy="reference")
    sizes = [t.numel() for t in list(kw.values()) + list(init) + [o] if isinstance(t, torch.Tensor)]
    B, T = o.shape[:2]
    spy = _LargestTensor()
    with torch.no_grad(), spy:
        fn(**kw, scale=sc, initial_state=init_arg, output_final_state=True, strategy="sequential")
    # the stand-in kernel (core_reference) holds one [B, H, K, V] state and stacks the outputs
    assert spy.largest <= max(sizes) * 2, (spy.largest, max(sizes), B, T)
