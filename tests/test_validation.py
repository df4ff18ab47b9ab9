"""Bad input gets a ValueError naming the argument, what was expected and what arrived."""

import pytest
import torch

from scandsl import ops


def _ok(B=1, T=5, H=2, K=4, V=3):
    return dict(
        q=torch.randn(B, T, H, K),
        k=torch.randn(B, T, H, K),
        v=torch.randn(B, T, H, V),
        g=-torch.rand(B, T, H),
    )


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: a.update(q=torch.randn(1, 5, 2)), r"q: expected 4 dims"),
        (lambda a: a.update(k=torch.randn(1, 6, 2, 4)), r"k: expected \[B,T,H\] = \[1, 5, 2\]"),
        (lambda a: a.update(k=torch.randn(1, 5, 2, 7)), r"k: expected K = 4"),
        (lambda a: a.update(g=torch.rand(1, 5, 2)), r"g: expected a log-space decay"),
        (lambda a: a.update(v=torch.randint(0, 3, (1, 5, 2, 3))), r"v: expected a floating-point tensor"),
        (lambda a: a.update(v=None), r"v: expected a tensor"),
        (lambda a: a.update(q=[1, 2]), r"q: expected a torch.Tensor"),
    ],
)
def test_bad_inputs_name_the_argument(mutate, match):
    args = _ok()
    mutate(args)
    with pytest.raises(ValueError, match=match):
        ops.mamba2(**args, strategy="reference")


def test_unknown_strategy():
    with pytest.raises(ValueError, match=r"strategy: expected one of"):
        ops.mamba2(**_ok(), strategy="fast")


def test_illegal_strategy_names_legal_ones():
    a = _ok()
    with pytest.raises(ValueError, match=r"'scan' is not legal for deltanet.*Legal strategies"):
        ops.deltanet(a["q"], a["k"], a["v"], torch.rand(1, 5, 2), strategy="scan")
    x = torch.randn(1, 5, 2, 3)
    with pytest.raises(ValueError, match=r"'chunk' is not legal for mamba"):
        ops.mamba(
            torch.randn(1, 5, 2, 4),
            torch.randn(1, 5, 2, 4),
            x,
            torch.rand(1, 5, 2, 3) + 0.1,
            torch.randn(2, 3, 4),
            strategy="chunk",
        )


def test_float64_needs_reference():
    a = {n: t.double() for n, t in _ok().items()}
    with pytest.raises(ValueError, match=r"use strategy='reference' for float64"):
        ops.mamba2(**a, strategy="sequential")


def test_initial_state_shape_is_checked():
    with pytest.raises(ValueError, match=r"initial_state\[S\]: expected shape \[1, 2, 4, 3\]"):
        ops.mamba2(**_ok(), initial_state=torch.zeros(1, 2, 3, 4), strategy="reference")


def test_mismatched_heads_for_params():
    a = _ok()
    with pytest.raises(ValueError, match=r"gamma: expected H = 2"):
        ops.retention(a["q"], a["k"], a["v"], gamma=-torch.rand(3), strategy="reference")


@pytest.mark.parametrize(
    "cu, match",
    [
        (torch.tensor([1, 5]), "to start at 0"),
        (torch.tensor([0, 4]), "to end at T = 5"),
        (torch.tensor([0, 3, 2, 5]), "non-decreasing"),
        (torch.tensor([0.0, 5.0]), "integer tensor"),
        ([0, 5], "LongTensor"),
    ],
)
def test_bad_cu_seqlens(cu, match):
    with pytest.raises(ValueError, match=f"cu_seqlens: .*{match}"):
        ops.mamba2(**_ok(), cu_seqlens=cu, strategy="reference")


def test_cu_seqlens_needs_batch_one():
    with pytest.raises(ValueError, match=r"B: expected B == 1 when cu_seqlens"):
        ops.mamba2(**_ok(B=2), cu_seqlens=torch.tensor([0, 5]), strategy="reference")


def test_scale_on_s4_is_refused():
    H, V, N = 2, 3, 4
    with pytest.raises(ValueError, match="scale: s4 has no query"):
        ops.s4(
            torch.randn(1, 5, H, V),
            torch.rand(H, V) + 0.1,
            torch.randn(H, V, N),
            torch.randn(H, V, N),
            torch.randn(H, V, N),
            torch.randn(H, V),
            scale=2.0,
            strategy="reference",
        )


def test_feature_map_validation():
    a = _ok()
    with pytest.raises(ValueError, match="feature_map: expected one of"):
        ops.linear_attn(a["q"], a["k"], a["v"], feature_map="gelu", strategy="reference")


def test_value_checks_follow_the_knob(monkeypatch):
    """Host tensors are value-checked by default; device tensors only when asked (a check there
    is a device-to-host sync per call); 0 turns them off."""
    from scandsl import knobs

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert knobs.check_values(cpu) and not knobs.check_values(cuda)
    monkeypatch.setenv("SCANDSL_CHECK_VALUES", "1")
    assert knobs.check_values(cpu) and knobs.check_values(cuda)
    monkeypatch.setenv("SCANDSL_CHECK_VALUES", "0")
    args = _ok()
    args["g"] = torch.rand(1, 5, 2)  # growth instead of decay: computed as given, unchecked
    o, _ = ops.mamba2(**args, strategy="reference")
    assert torch.isfinite(o).all()


def test_scale_is_folded_without_a_pass_over_q(monkeypatch):
    """The kernel path folds ``scale`` into the core: q reaches the strategy unscaled, once."""
    import scandsl._entry as entry

    seen = {}

    class Spy:
        @staticmethod
        def supports(sig):
            return None

        @staticmethod
        def run(sig, x, config):
            seen["q"], seen["scale"] = x.q, x.scale
            return torch.zeros(x.B, x.T, x.H, x.V), torch.zeros(x.B, x.H, x.K, x.V)

    monkeypatch.setattr(entry, "load_strategy", lambda s: Spy)
    args = _ok()
    ops.mamba2(**args, scale=0.5, strategy="chunk")
    assert seen["q"] is args["q"] and seen["scale"] == 0.5
