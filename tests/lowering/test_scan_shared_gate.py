"""The scan reads a value gate that is the decay's gate once, and skips a scale of 1.

Mamba's ``dt`` scales the input (``v ⊙ vg`` with ``vg = dt``) and the decay's exponent
(``gv = dt``): where ``CoreInputs.vg is gv`` the kernels take the value's factor from the gate
rows they load anyway (``shared_gate``), forward and backward, and the gradient of the one
tensor gathers both roles. ``SCALED`` (a constexpr from ``scale != 1``) leaves the read-out's
multiply out. Core level: outputs, final state and every gradient against ``core_reference``
at awkward sizes, on NaN-poisoned buffers (``test_scan``'s fixtures), walk and split forward.
Op level: mamba runs the shared variant (with and without its skip term), s4 cannot. The
backward stores a gradient with one partial in its input's dtype (bf16 here) directly.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402
from scandsl.lowering import scan  # noqa: E402

from scandsl import ops  # noqa: E402
from scandsl._core import CoreInputs  # noqa: E402
from scandsl._entry import source_options  # noqa: E402
from scandsl.testing import TAXONOMY_SIGS  # noqa: E402
from tests.lowering import test_scan  # noqa: E402
from tests.lowering.test_scan import _cfg, _compare, _inputs, _split  # noqa: E402
from tests.lowering.test_scan_skip import _op_compare, _op_inputs  # noqa: E402

_interpreter = test_scan._interpreter
split_calls = test_scan.split_calls
SHARING = [n for n, sig in TAXONOMY_SIGS.items() if scan.shares_gate(sig) and scan.supports(sig) is None]


@pytest.fixture
def variants(monkeypatch):
    """The ``shared_gate`` of every module the scan loads."""
    seen: list[bool] = []
    kernels = scan.kernels

    def spy(sig, value_gated=False, skip=False, shared_gate=False):
        seen.append(shared_gate)
        return kernels(sig, value_gated, skip, shared_gate)

    monkeypatch.setattr(scan, "kernels", spy)
    return seen


def _shared(x: CoreInputs) -> CoreInputs:
    """``x`` with the decay's gate as its value gate: the same tensor, not a copy."""
    assert x.gv is not None
    x.vg = x.gv
    return x


def test_sharing_signatures():
    assert set(SHARING) >= {"channel"}
    assert "channel_static" not in SHARING  # s4's gate is [H, V]: not a per-step value factor
    for name in ("scalar", "key", "none"):
        if name in TAXONOMY_SIGS:
            assert not scan.shares_gate(TAXONOMY_SIGS[name]), name


@pytest.mark.parametrize("name", SHARING)
@pytest.mark.parametrize("T", [1, 37])
def test_shared_gate_core(name: str, T: int, variants):
    sig = TAXONOMY_SIGS[name]
    x = _shared(_inputs(sig, B=2, T=T, H=2, seed=11))
    _compare(sig, x, _cfg(x.K, BT=16, BV=16, bwd={"BT": 8}))
    assert variants and all(variants)


@pytest.mark.parametrize("name", SHARING)
def test_shared_gate_small_tiles_and_split(name: str, variants, split_calls):
    """Several K- and V-blocks (the gate's gradient is summed over K-blocks), the split forward."""
    sig = TAXONOMY_SIGS[name]
    x = _shared(_inputs(sig, B=1, T=45, H=2, seed=12))
    _compare(sig, x, _split(_cfg(x.K, BT=8, BK=8, BV=16, bwd={"BT": 8, "BK": 8, "BV": 32}), 16))
    assert split_calls and all(variants)


@pytest.mark.parametrize("BK", [16, 8])
def test_bf16_gradients(BK: int, variants, monkeypatch):
    """bf16 inputs: with one K-block the kernel stores dv and the gate's gradient in bf16 itself,
    with two it stores fp32 partials the host sums; both within bf16's tolerance."""
    sig = TAXONOMY_SIGS["channel"]
    x = _inputs(sig, B=1, T=37, H=2, seed=16, dtype=torch.bfloat16)
    assert x.gv is not None
    x.gv = x.gv.detach().to(torch.bfloat16).requires_grad_()  # a bf16 gate, as mamba's dt
    x = _shared(x)
    made: list[tuple[int, torch.dtype]] = []
    empty = scan._empty
    monkeypatch.setattr(
        scan,
        "_empty",
        lambda *shape, dtype, device: (
            made.append((len(shape), dtype)) or empty(*shape, dtype=dtype, device=device)
        ),
    )
    _compare(sig, x, _cfg(x.K, BT=16, BK=BK, BV=16, bwd={"BT": 8, "BK": BK}), torch.bfloat16)
    assert variants and all(variants)
    direct = [d for n, d in made if n == 5 and d == torch.bfloat16]  # [1, B, T, H, V] in bf16
    assert len(direct) == (3 if BK == 16 else 0)  # the output, dv and the gate's gradient


def test_equal_copy_is_not_shared(variants):
    """A gate equal in value but another tensor runs the unshared module (vg loaded on its own),
    and matches the reference as well."""
    sig = TAXONOMY_SIGS["channel"]
    x = _inputs(sig, B=1, T=23, H=2, seed=13)
    assert x.gv is not None
    x.vg = x.gv.detach().clone().requires_grad_()
    _compare(sig, x, _cfg(x.K, BT=16, BV=16, bwd={"BT": 8}))
    assert variants and not any(variants)


@pytest.mark.parametrize("scale", [1.0, 0.37])
@pytest.mark.parametrize("name", ["channel", "key", "key_before", "channel_before"])
def test_scale_constexpr(name: str, scale: float):
    """The read-out multiplies by the scale only when it is not 1; both agree with the reference."""
    sig = {**TAXONOMY_SIGS, **test_scan.EXTRA}[name]
    x = _inputs(sig, B=1, T=29, H=2, seed=14)
    x.scale = scale
    _compare(sig, x, _cfg(x.K, BT=16, BV=16, bwd={"BT": 8}))


def test_source():
    sig = TAXONOMY_SIGS["channel"]
    src = scan.generate_source(sig, value_gated=True, shared_gate=True)
    compile(src, "<shared>", "exec")
    assert "tl.load(vg" not in src and "n_vg" not in src
    assert src.count("b_w = b_v * b_gv") == 4  # walk, split passes 1 and 3, backward
    bwd = src[src.index("def scan_bwd_kernel(") :]
    assert "b_dv * b_gv" in bwd and "tl.store(dvg" not in bwd  # one gradient for the one tensor:
    assert "b_dvg = b_dv * b_v" in bwd and "axis=1) + b_dvg, mask=" in bwd  # both roles, one store
    assert src.count("if SCALED:") == 2  # the walk's and pass 3's read-outs
    assert "tl.load(vg" in scan.generate_source(sig, value_gated=True)
    with pytest.raises(ValueError, match="shared_gate"):
        scan.generate_source(TAXONOMY_SIGS["channel_static"], value_gated=True, shared_gate=True)
    with pytest.raises(ValueError, match="shared_gate"):
        scan.generate_source(sig, shared_gate=True)  # no value gate to share


# ---------------------------------------------------------------- op level
def test_source_options():
    stage = ops.mamba_spec.normal_form.stages[0]
    assert source_options(ops.mamba_spec, stage, scan) == {
        "value_gated": True,
        "skip": True,
        "shared_gate": True,
    }
    s4 = ops.s4_spec.normal_form.stages[0]
    assert source_options(ops.s4_spec, s4, scan)["shared_gate"] is False


@pytest.mark.parametrize("D", [True, False])
def test_op_mamba_shares(D: bool, variants):
    """With its skip term (the value's factor x goes to v, dt to vg) and without (the factors as
    the spec lists them, dt moved to vg): every gradient, dt's from both roles, matches."""
    args = _op_inputs("mamba", B=2, T=21, seed=15)
    if not D:
        args["D"] = None
    _op_compare("mamba", args)
    assert variants and all(variants)
