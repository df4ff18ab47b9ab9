"""The per-call-signature memo of the op entry (``scandsl._validate.check_call``): what it keeps
is what validation established from shapes, dtypes and devices; value checks and ``cu_seqlens``
stay per call."""

import pytest
import torch
import torch.nn.functional as F

from scandsl import _validate, ops
from scandsl._validate import check_call


def _gla_args(T=9, K=4, V=4, B=1):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(B, T, 2, K, generator=g), torch.randn(B, T, 2, K, generator=g)
    v = torch.randn(B, T, 2, V, generator=g)
    gk = F.logsigmoid(torch.randn(B, T, 2, K, generator=g))
    return dict(q=q, k=k, v=v, gk=gk)


def test_same_signature_is_validated_once():
    spec = ops.gla_spec
    a, b = _gla_args(), _gla_args()
    first = check_call(spec, a, cu_seqlens=None, strategy="auto")
    assert check_call(spec, b, cu_seqlens=None, strategy="auto") is first
    other = check_call(spec, _gla_args(T=10), cu_seqlens=None, strategy="auto")
    assert other is not first and other.sizes == first.sizes


def test_value_checks_run_on_every_call():
    args = _gla_args()
    ops.gla(**args, strategy="reference")
    bad = dict(args, gk=args["gk"].abs() + 0.5)  # same signature, positive "log-gates"
    with pytest.raises(ValueError, match="gk: expected a log-space decay"):
        ops.gla(**bad, strategy="reference")


def test_shape_errors_are_never_memoised():
    args = _gla_args()
    ops.gla(**args, strategy="reference")
    with pytest.raises(ValueError, match="v: expected"):
        ops.gla(**dict(args, v=args["v"][:, :-1]), strategy="reference")
    with pytest.raises(ValueError, match="strategy"):
        ops.gla(**args, strategy="fastest")


def test_cu_seqlens_are_checked_per_call():
    args = _gla_args(T=12)
    two = torch.tensor([0, 5, 12])
    three = torch.tensor([0, 3, 7, 12])
    spec = ops.gla_spec
    assert check_call(spec, args, cu_seqlens=two, strategy="reference").n_seq == 2
    assert check_call(spec, args, cu_seqlens=three, strategy="reference").n_seq == 3
    with pytest.raises(ValueError, match="cu_seqlens"):
        check_call(spec, args, cu_seqlens=torch.tensor([0, 5, 11]), strategy="reference")


def test_omitted_optional_inputs_are_zeros_under_inference_mode_too():
    g = torch.Generator().manual_seed(1)
    x = dict(
        q=torch.randn(1, 5, 2, 3, generator=g),
        k=torch.randn(1, 5, 2, 3, generator=g),
        v=torch.randn(1, 5, 2, 4, generator=g),
        dt=torch.rand(1, 5, 2, 4, generator=g) + 0.1,
        A_log=torch.randn(2, 4, 3, generator=g),
    )
    with torch.inference_mode():
        o_inf, _ = ops.mamba(**x, strategy="reference")
    v = x["v"].clone().requires_grad_()
    o, _ = ops.mamba(**dict(x, v=v), strategy="reference")  # D's zeros must not be inference tensors
    o.sum().backward()
    torch.testing.assert_close(o.detach(), o_inf)
    assert v.grad is not None


def test_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(_validate, "_CHECKED_MAX", 3)
    monkeypatch.setattr(_validate, "_CHECKED", {})
    for T in range(2, 10):
        check_call(ops.gla_spec, _gla_args(T=T), cu_seqlens=None, strategy="auto")
    assert len(_validate._CHECKED) <= 3


def test_config_memo_shares_results_and_falls_back_on_unhashable_configs(monkeypatch):
    from scandsl.lowering import _config

    calls = []

    @_config.config_memo
    def resolve(sig, shape, config):
        calls.append(config)
        return {"tile": 16, **(config or {})}

    a = resolve("sig", (1, 2), config={"tile": 32})
    assert resolve("sig", (1, 2), config={"tile": 32}) is a and len(calls) == 1
    assert resolve("sig", (1, 3), config={"tile": 32}) is not a and len(calls) == 2
    assert resolve("sig", (1, 2), config={"tiles": [1, 2]})["tiles"] == [1, 2]  # unhashable: resolved afresh
    assert resolve("sig", (1, 2), config={"tiles": [1, 2]}) is not resolve("sig", (1, 2), config={"tiles": [1, 2]})
    monkeypatch.setattr(_config, "_MAX_ENTRIES", 2)
    for n in range(5):
        resolve("sig", (n,), config=None)
    resolve.cache_clear()
    resolve("sig", (1, 2), config={"tile": 32})
    assert calls[-1] == {"tile": 32}  # cleared: resolved again


def test_node_and_spec_hashes_are_cached_and_structural():
    import dataclasses

    from scandsl._expr import Input, Op

    a = Op("mul", (Input("dt", ("V",)), Input("v", ("V",))), ("V",))
    b = Op("mul", (Input("dt", ("V",)), Input("v", ("V",))), ("V",))
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    spec = ops.mamba_spec
    twin = dataclasses.replace(spec)
    assert twin is not spec and twin == spec and hash(twin) == hash(spec)
