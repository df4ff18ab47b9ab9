"""Chunked scalar-decay kernels (decay NONE / SCALAR) against ``core_reference``, on the interpreter.

Every call runs with NaN-poisoned output and gradient buffers, so an element a kernel fails to
write shows up as an infinite error. Chunk size 16 keeps several chunks per sequence at T <= 67.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402
from scandsl.lowering import chunk as chunk_dispatch  # noqa: E402
from scandsl.lowering import chunk_scalar, chunk_scalar_launch, chunk_scalar_split  # noqa: E402

from scandsl._core import CoreInputs, CoreSig, Decay, Readout, Shape, Transition, core_reference  # noqa: E402
from scandsl.testing import TOLERANCES, assert_close, random_core_inputs  # noqa: E402

SIGS = {
    "none": CoreSig(),
    "scalar": CoreSig(decay=Decay.SCALAR),
    "scalar_before": CoreSig(decay=Decay.SCALAR, readout=Readout.BEFORE),
    "none_before": CoreSig(readout=Readout.BEFORE),
}
CFG = {"chunk": 16, "block_v": 16, "bwd_chunk": 16, "bwd_block_k": 16, "bwd_block_v": 32, "fwd_mode": "fused"}
GRAD_NAMES = ("q", "k", "v", "g", "initial_state")


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setitem(chunk_scalar_launch.POISON, "enabled", True)


def _grad_inputs(x: CoreInputs) -> list[tuple[str, torch.Tensor]]:
    return [(n, getattr(x, n)) for n in GRAD_NAMES if getattr(x, n) is not None]


def _compare(sig: CoreSig, x: CoreInputs, cfg: dict = CFG, dtype: torch.dtype = torch.float32) -> None:
    """Outputs, final state and every gradient against the fp32 reference."""
    tol_out, tol_grad = TOLERANCES[dtype]
    o, ht = chunk_scalar.run(sig, x, cfg)
    ro, rht = core_reference(sig, x)
    assert o.dtype == (x.out_dtype or x.v.dtype)
    assert_close(o.float(), ro.float(), tol_out, "o")
    loss_k = (o.float() * ro.detach().float().cos()).sum()
    loss_r = (ro.float() * ro.detach().float().cos()).sum()
    if x.output_final_state:
        assert_close(ht, rht, tol_out, "final_state")
        dht = torch.randn_like(rht)
        loss_k = loss_k + (ht * dht).sum()
        loss_r = loss_r + (rht * dht).sum()
    else:
        assert ht is None
    named = _grad_inputs(x)
    got = torch.autograd.grad(loss_k, [t for _, t in named])
    ref = torch.autograd.grad(loss_r, [t for _, t in named])
    for (name, _), a, b in zip(named, got, ref):
        assert_close(a.float(), b.float(), tol_grad, f"d{name}")


@pytest.mark.parametrize("kv", [(24, 40), (16, 16)], ids=["K24V40", "K16V16"])
@pytest.mark.parametrize("T", [1, 37, 67])
@pytest.mark.parametrize("name", list(SIGS))
def test_matches_reference(name, T, kv):
    K, V = kv
    sig = SIGS[name]
    x = random_core_inputs(sig, B=2, T=T, H=2, K=K, V=V, seed=T + K, requires_grad=True)
    _compare(sig, x)


@pytest.mark.parametrize("name", ["none", "scalar", "scalar_before"])
def test_varlen_with_empty_and_single_sequences(name):
    sig = SIGS[name]
    cu_dtype = torch.int64 if name == "none" else torch.int32  # both index widths
    cu = torch.tensor([0, 0, 1, 6, 37], dtype=cu_dtype)  # lengths 0, 1, 5, 31
    x = random_core_inputs(sig, T=37, H=2, K=24, V=40, cu_seqlens=cu, seed=3, requires_grad=True)
    _compare(sig, x)


@pytest.mark.parametrize("name", ["none", "scalar"])
def test_without_states(name):
    """No initial state, no final state: the zero-state paths and a backward with no dS_T."""
    sig = SIGS[name]
    x = random_core_inputs(sig, B=1, T=37, H=2, K=24, V=40, seed=5, with_state=False, requires_grad=True)
    x.output_final_state = False
    _compare(sig, x)


def test_default_tiles():
    """The 16-bit default tiles (chunk 64, fused backward) on fp32 inputs: one full chunk and a ragged one."""
    sig = SIGS["scalar"]
    x = random_core_inputs(sig, B=1, T=67, H=1, K=24, V=40, seed=7, requires_grad=True)
    _compare(sig, x, cfg=chunk_scalar.default_config(sig, Shape(1, 67, 1, 24, 40)))


@pytest.mark.parametrize("name", ["none", "scalar_before"])
def test_two_backward_launches(name):
    """bwd_fused off (dq/dk and dv as separate launches), a backward chunk unlike the forward's."""
    sig = SIGS[name]
    cfg = {
        "chunk": 32,
        "block_v": 64,
        "bwd_chunk": 16,
        "bwd_block_k": 32,
        "bwd_block_v": 16,
        "bwd_fused": False,
    }
    x = random_core_inputs(sig, B=2, T=37, H=1, K=24, V=40, seed=19, requires_grad=True)
    _compare(sig, x, cfg=cfg)


def test_state_hand_off():
    """Two calls chained through the final state equal one call over the whole sequence."""
    sig = SIGS["scalar"]
    x = random_core_inputs(sig, B=2, T=37, H=2, K=24, V=40, seed=11)
    o, ht = chunk_scalar.run(sig, x, CFG)
    cut = 21
    parts = []
    state = x.initial_state
    for lo, hi in ((0, cut), (cut, x.T)):
        xp = CoreInputs(
            q=x.q[:, lo:hi], k=x.k[:, lo:hi], v=x.v[:, lo:hi], g=x.g[:, lo:hi], scale=x.scale,
            initial_state=state, output_final_state=True,
        )  # fmt: skip
        op, state = chunk_scalar.run(sig, xp, CFG)
        parts.append(op)
    assert_close(torch.cat(parts, 1), o, 1e-5, "o after hand-off")
    assert_close(state, ht, 1e-5, "final state after hand-off")


def test_strong_gates_stay_finite():
    """Log-decays of -60 per step would overflow any exp(+G) rebasing; ours stays finite and exact."""
    sig = SIGS["scalar"]
    x = random_core_inputs(sig, B=1, T=67, H=2, K=16, V=16, seed=13)
    x.g = torch.where(torch.rand(x.g.shape, generator=torch.Generator().manual_seed(1)) < 0.5, -60.0, -1e-3)
    x.g.requires_grad_(True)
    for t in (x.q, x.k, x.v, x.initial_state):
        t.requires_grad_(True)
    _compare(sig, x)


def test_half_inputs():
    """16-bit operands on the tensor-core path (fp16: the interpreter's tl.dot mangles bf16 bits;
    bf16 is checked on the GPU by bench/gpu_check_chunk_scalar.py)."""
    sig = SIGS["scalar"]
    x = random_core_inputs(sig, B=1, T=37, H=2, K=24, V=40, dtype=torch.float16, seed=17, requires_grad=True)
    _compare(sig, x, dtype=torch.float16)


def test_generated_source_has_named_slots():
    none = chunk_scalar.generate_source(SIGS["none"], None)
    scalar = chunk_scalar.generate_source(SIGS["scalar_before"], {"fp32_dot": "tf32"})
    for kernel in (
        "def chunk_scalar_fwd(",
        "def chunk_scalar_bwd(",
        "def _bwd_dq(",
        "def _bwd_dk(",
        "def _bwd_dv(",
    ):
        assert kernel in none and kernel in scalar
    assert "tl.exp" not in none and "b_g = tl.load(g + row" not in none
    assert "b_gq = b_gc - b_g" in scalar and 'DOT_PRECISION = tl.constexpr("tf32")' in scalar
    assert "@" not in "".join(line for line in scalar.splitlines() if not line.startswith("@triton"))
    compile(scalar, "<chunk_scalar>", "exec")


def test_supports_and_dispatch():
    assert chunk_scalar.supports(SIGS["scalar_before"]) is None
    assert chunk_dispatch.supports(SIGS["scalar"]) is None
    assert "NONE or SCALAR" in chunk_scalar.supports(CoreSig(decay=Decay.KEY))
    assert "identity" in chunk_scalar.supports(CoreSig(transition=Transition.DELTA))
    sig = SIGS["scalar"]
    x = random_core_inputs(sig, B=1, T=5, H=1, K=16, V=16, seed=23)
    o, ht = chunk_dispatch.run(sig, x, CFG)
    ro, rht = core_reference(sig, x)
    assert_close(o, ro, TOLERANCES[torch.float32][0], "o through the chunk dispatcher")
    assert_close(ht, rht, TOLERANCES[torch.float32][0], "final state through the chunk dispatcher")


def test_search_space_and_default_config():
    shape = Shape(4, 4096, 16, 128, 128)
    space = chunk_scalar.search_space(SIGS["scalar"], shape)
    grid = space.grid()
    assert grid and all(space.valid(cfg) is None for cfg in grid)
    assert space.valid(chunk_scalar.default_config(SIGS["scalar"], shape)) is None
    wide = Shape(1, 100, 2, 256, 256)
    wide_space = chunk_scalar.search_space(SIGS["none"], wide)
    assert wide_space.valid(chunk_scalar.default_config(SIGS["none"], wide)) is None
    bad = {**chunk_scalar.default_config(SIGS["scalar"], shape), "chunk": 128, "num_warps": 2}
    assert "registers" in space.valid(bad)


# ---- fwd_mode="split": state pass + parallel output kernel (lowering/chunk_scalar_split.py) ----

SPLIT = {**CFG, "fwd_mode": "split"}


@pytest.mark.parametrize(
    ("name", "T", "kv", "extra"),
    [
        ("none", 37, (24, 40), {}),
        ("scalar", 67, (24, 40), {"split_block_k": 16, "split_block_v": 32}),  # K split in the state pass
        ("scalar_before", 37, (16, 16), {"split_state": "input"}),
        ("none_before", 1, (24, 40), {}),
        ("scalar", 1, (16, 16), {"chunk": 32}),
    ],
    ids=["none-T37", "scalar-T67-kblocks", "scalar_before-T37-h_input", "none_before-T1", "scalar-T1"],
)
def test_split_forward_matches_reference(name, T, kv, extra):
    sig = SIGS[name]
    K, V = kv
    x = random_core_inputs(sig, B=2, T=T, H=2, K=K, V=V, seed=T + K + 1, requires_grad=True)
    _compare(sig, x, cfg={**SPLIT, **extra})


@pytest.mark.parametrize("name", ["none", "scalar_before"])
def test_split_forward_varlen(name):
    sig = SIGS[name]
    cu = torch.tensor([0, 0, 1, 6, 37, 37], dtype=torch.int32)  # lengths 0, 1, 5, 31, 0
    x = random_core_inputs(sig, T=37, H=2, K=24, V=40, cu_seqlens=cu, seed=29, requires_grad=True)
    _compare(sig, x, cfg=SPLIT)


def test_split_forward_without_states_equals_fused():
    sig = SIGS["scalar"]
    x = random_core_inputs(sig, B=1, T=37, H=2, K=24, V=40, seed=31, with_state=False, requires_grad=True)
    x.output_final_state = False
    _compare(sig, x, cfg=SPLIT)
    o_split, _ = chunk_scalar.run(sig, x, SPLIT)
    o_fused, _ = chunk_scalar.run(sig, x, CFG)
    assert_close(o_split, o_fused, 1e-5, "split vs fused")


def test_split_mode_config():
    shape = Shape(4, 4096, 16, 128, 128)
    sig = SIGS["scalar"]
    assert chunk_scalar.default_config(sig, shape)["fwd_mode"] == "fused"  # measured default stays
    # few programs for the fused walk (one long sequence): the split forward, measured faster there
    long = Shape(1, 65536, 16, 128, 128)
    few = chunk_scalar.default_config(sig, long)
    assert few["fwd_mode"] == "split" and few["split_state"] == "input"
    assert few["split_block_k"] == few["split_block_v"] == 32
    assert chunk_scalar.search_space(sig, long).valid(few) is None
    # ... but a packed batch of many sequences has programs enough
    assert chunk_scalar.default_config(sig, long, n_seq=40)["fwd_mode"] == "fused"
    assert chunk_scalar.default_config(sig, long, dtype=torch.float32)["fwd_mode"] == "fused"
    space = chunk_scalar.search_space(sig, shape)
    assert any(p.name == "fwd_mode" and "split" in p.choices for p in space.params)
    base = chunk_scalar.default_config(sig, shape)
    assert space.valid({**base, "fwd_mode": "split"}) is None
    assert "fwd_mode" in space.valid({**base, "fwd_mode": "other"})
    src = chunk_scalar_split.generate_split_source(SIGS["scalar_before"])
    assert "def chunk_scalar_fwd_h(" in src and "def chunk_scalar_fwd_o(" in src
    assert "b_gq = b_gc - b_g" in src
    compile(src, "<chunk_scalar_split>", "exec")


def test_split_forward_half_inputs():
    """fp16 operands, chunk-start states stored in fp16 (``split_state="input"``)."""
    sig = SIGS["scalar"]
    x = random_core_inputs(sig, B=1, T=37, H=2, K=24, V=40, dtype=torch.float16, seed=37, requires_grad=True)
    _compare(sig, x, cfg={**SPLIT, "split_state": "input"}, dtype=torch.float16)


def test_split_state_is_searched_only_with_split():
    space = chunk_scalar.search_space(SIGS["none"], Shape(1, 100, 2, 64, 64))
    base = chunk_scalar.default_config(SIGS["none"], Shape(1, 100, 2, 64, 64))
    assert space.valid({**base, "fwd_mode": "split", "split_state": "input"}) is None
    assert "split_state" in space.valid({**base, "fwd_mode": "fused", "split_state": "input"})
