"""Chunked delta-rule kernels against ``core_reference``: on the Triton interpreter without a GPU,
compiled on one with (the ``gpu``-marked bf16 case runs only there: the interpreter's bf16
``tl.dot`` is not exact arithmetic, it reads the raw bits).

DeltaNet (``delta``) and Gated DeltaNet (``scalar_delta``): outputs, final states and the gradient
of q, k, v, beta, g and the initial state, with every buffer the kernels fill poisoned with NaN.
Chunks of 16 keep the interpreter fast; one case runs chunks of 64 so the block substitution
below the diagonal of the triangular solve (four 16-step sub-blocks) is exercised too.
"""

from __future__ import annotations

import ast
import os

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402
from scandsl.lowering import chunk_delta  # noqa: E402

from scandsl._core import CoreInputs, CoreSig, Shape, core_reference  # noqa: E402
from scandsl.testing import TAXONOMY_SIGS, TOLERANCES, assert_close, random_core_inputs, rel_err  # noqa: E402

# V-blocks of 16 split V=40 three ways; bwd_bk=16 splits K=24 in two (partial dbeta / dg sums)
CFG = {
    "chunk": 16,
    "bv": 16,
    "out_bv": 16,
    "bwd_bk": 16,
    "num_warps": 1,
    "state_warps": 1,
    "num_stages": 1,
    "bwd_warps": 1,
}
NAMES = ("q", "k", "v", "g", "beta", "initial_state")
SIGS = ("delta", "scalar_delta")


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(chunk_delta, "POISON", True)


def _compare(sig: CoreSig, x: CoreInputs, cfg: dict = CFG, dtype: torch.dtype = torch.float32) -> None:
    """Outputs, final state and every gradient against the fp32 reference."""
    tol_out, tol_grad = TOLERANCES[dtype]
    o, ht = chunk_delta.run(sig, x, cfg)
    ro, rht = core_reference(sig, x)
    assert_close(o, ro, tol_out, "o")
    assert_close(ht, rht, tol_out, "final state")
    named = [(n, getattr(x, n)) for n in NAMES if getattr(x, n) is not None and getattr(x, n).requires_grad]
    gen = torch.Generator().manual_seed(7)
    do = torch.randn(ro.shape, generator=gen).to(DEVICE)
    dht = torch.randn(rht.shape, generator=gen).to(DEVICE)
    got = torch.autograd.grad((o.float() * do).sum() + (ht * dht).sum(), [t for _, t in named])
    ref = torch.autograd.grad((ro.float() * do).sum() + (rht * dht).sum(), [t for _, t in named])
    for (name, _), a, b in zip(named, got, ref):
        assert_close(a, b, tol_grad, f"d{name}")


@pytest.mark.parametrize("name", SIGS)
@pytest.mark.parametrize("T", [1, 37, 67])
def test_matches_reference(name, T):
    sig = TAXONOMY_SIGS[name]
    _compare(
        sig, random_core_inputs(sig, B=2, T=T, H=2, K=24, V=40, seed=T, requires_grad=True, device=DEVICE)
    )


@pytest.mark.parametrize("name", SIGS)
def test_small_heads(name):
    sig = TAXONOMY_SIGS[name]
    _compare(
        sig, random_core_inputs(sig, B=1, T=37, H=2, K=16, V=16, seed=3, requires_grad=True, device=DEVICE)
    )


@pytest.mark.parametrize("wu", ["blocks", "full", "split"])
def test_chunk_64_block_solve(wu):
    sig = TAXONOMY_SIGS["scalar_delta"]
    x = random_core_inputs(sig, B=1, T=67, H=1, K=24, V=40, seed=5, requires_grad=True, device=DEVICE)
    _compare(sig, x, CFG | {"chunk": 64, "bv": 32, "out_bv": 64, "bwd_bk": 32, "prepare_wu": wu})


@pytest.mark.parametrize("wu", ["full", "split"])
@pytest.mark.parametrize("name", SIGS)
def test_prepare_wu_products(name, wu):
    """w and u' as one [C, C] product through tmat (in delta_prepare or in delta_wu), the read-out
    walking K=24 in two slices of 16 (out_bk), varlen (a sequence shorter than a chunk, an
    empty one) and with no gradient wanted (T then lives only as the forward's scratch)."""
    sig = TAXONOMY_SIGS[name]
    cu = torch.tensor([0, 0, 1, 6, 37], device=DEVICE)
    x = random_core_inputs(
        sig, T=37, H=2, K=24, V=40, seed=29, cu_seqlens=cu, requires_grad=True, device=DEVICE
    )
    cfg = CFG | {"prepare_wu": wu, "chunk": 32, "prepare_warps": 2, "state_stages": 2, "out_bk": 16}
    _compare(sig, x, cfg)
    with torch.no_grad():
        o, ht = chunk_delta.run(sig, x, cfg)
    ro, rht = core_reference(sig, x)
    assert_close(o, ro, TOLERANCES[torch.float32][0], "o without grad")
    assert_close(ht, rht, TOLERANCES[torch.float32][0], "final state without grad")


@pytest.mark.parametrize("name", SIGS)
def test_varlen(name):
    sig = TAXONOMY_SIGS[name]
    cu = torch.tensor([0, 0, 1, 6, 37], device=DEVICE)  # lengths 0, 1, 5, 31
    _compare(
        sig,
        random_core_inputs(
            sig, T=37, H=2, K=24, V=40, seed=11, cu_seqlens=cu, requires_grad=True, device=DEVICE
        ),
    )


def test_state_handoff():
    """Two halves through the final/initial state give the same as one pass."""
    sig = TAXONOMY_SIGS["scalar_delta"]
    x = random_core_inputs(sig, B=2, T=37, H=2, K=24, V=40, seed=13, device=DEVICE)
    o, ht = chunk_delta.run(sig, x, CFG)

    def part(sl, h0):
        cut = {n: getattr(x, n)[:, sl] for n in ("q", "k", "v", "g", "beta")}
        return CoreInputs(**cut, scale=x.scale, initial_state=h0, output_final_state=True)

    o1, h1 = chunk_delta.run(sig, part(slice(0, 21), x.initial_state), CFG)
    o2, h2 = chunk_delta.run(sig, part(slice(21, 37), h1), CFG)
    tol = TOLERANCES[torch.float32][0]
    assert_close(torch.cat([o1, o2], 1), o, tol, "o of the halves")
    assert_close(h2, ht, tol, "final state of the halves")


def test_no_state_no_final_no_grad():
    """Without an initial state or a final-state gradient, and the inference path (no T kept)."""
    sig = TAXONOMY_SIGS["delta"]
    x = random_core_inputs(
        sig, B=2, T=37, H=2, K=24, V=40, seed=17, with_state=False, requires_grad=True, device=DEVICE
    )
    x.output_final_state = False
    o, ht = chunk_delta.run(sig, x, CFG)
    ro, _ = core_reference(sig, x)
    assert ht is None
    assert_close(o, ro, TOLERANCES[torch.float32][0], "o")
    do = torch.randn_like(ro)
    got = torch.autograd.grad((o * do).sum(), [x.q, x.k, x.v, x.beta])
    ref = torch.autograd.grad((ro * do).sum(), [x.q, x.k, x.v, x.beta])
    for name, a, b in zip("q k v beta".split(), got, ref):
        assert_close(a, b, TOLERANCES[torch.float32][1], f"d{name}")
    with torch.no_grad():
        o2, _ = chunk_delta.run(sig, x, CFG)
    assert_close(o2, ro, TOLERANCES[torch.float32][0], "o without grad")


def test_generated_source_slots():
    src_none = chunk_delta.generate_source(TAXONOMY_SIGS["delta"], {"chunk": 32})
    src_scalar = chunk_delta.generate_source(TAXONOMY_SIGS["scalar_delta"], {"chunk": 32})
    for src in (src_none, src_scalar):
        ast.parse(src)
        assert "@" not in src.replace("@triton.jit", "").replace("a @ b", "")
        assert "b_T10 = -_dot32(b_T11, _dot32(b_A10, b_T00))" in src  # the unrolled block solve
    assert "tl.exp" not in src_none and "b_G" not in src_none  # no decay at all for DeltaNet
    assert "b_G = tl.cumsum(b_g, axis=0)" in src_scalar


@pytest.mark.gpu
@pytest.mark.parametrize("name", SIGS)
def test_bf16_compiled(name):
    """bf16 operands at the default tiles (chunks of 64, wgmma-sized), K = V = 128."""
    sig = TAXONOMY_SIGS[name]
    x = random_core_inputs(sig, B=2, T=300, H=2, K=128, V=128, seed=19, requires_grad=True, device=DEVICE,
                           dtype=torch.bfloat16)  # fmt: skip
    _compare(sig, x, cfg={}, dtype=torch.bfloat16)


@pytest.mark.parametrize("name", sorted(chunk_delta.GOLDEN))
def test_golden(name):
    """A codegen change must show in the diff of lowering/golden/."""
    sig, cfg, dtype = chunk_delta.GOLDEN[name]
    path = chunk_delta.GOLDEN_DIR / f"{name}.py"
    assert path.exists(), f"{path} is missing: python -m scandsl.lowering.chunk_delta --write-golden"
    assert chunk_delta.generate_source(sig, cfg, dtype=dtype) == path.read_text(), (
        f"generated {name} differs from {path}; if intended: python -m scandsl.lowering.chunk_delta --write-golden"
    )


def test_supports_and_space():
    assert chunk_delta.supports(TAXONOMY_SIGS["delta"]) is None
    assert chunk_delta.supports(TAXONOMY_SIGS["scalar_delta"]) is None
    assert chunk_delta.supports(TAXONOMY_SIGS["scalar"]) is not None
    shape = Shape(B=4, T=4096, H=16, K=128, V=128)
    space = chunk_delta.search_space(TAXONOMY_SIGS["delta"], shape)
    grid = space.grid()
    assert grid and all(c["chunk"] % 16 == 0 for c in grid)
    default = chunk_delta.default_config(TAXONOMY_SIGS["delta"], shape)
    assert space.valid(default) is None
    assert space.valid(default | {"bwd_bk": 128, "chunk": 64, "bwd_warps": 4}) is not None


@pytest.mark.parametrize("name", SIGS)
def test_operand_dtype_of_the_features(name):
    """fp16 q, k, v with an fp32 beta folded into v upstream reach the core with an fp32 v:
    ``operand_dtype="qk"`` runs the products in fp16 (within fp16's tolerance of the reference,
    gradients included), ``"v"`` in fp32 (within fp32's); the output keeps v's dtype."""
    sig = TAXONOMY_SIGS[name]
    x = random_core_inputs(sig, B=2, T=37, H=2, K=24, V=40, seed=23, requires_grad=True, device=DEVICE,
                           dtype=torch.float16)  # fmt: skip
    x.v = x.v.detach().float().requires_grad_()
    _compare(sig, x, CFG | {"operand_dtype": "qk"}, dtype=torch.float16)
    o16, _ = chunk_delta.run(sig, x, CFG | {"operand_dtype": "qk"})
    o32, _ = chunk_delta.run(sig, x, CFG | {"operand_dtype": "v"})
    ro, _ = core_reference(sig, x)
    assert o16.dtype == o32.dtype == torch.float32
    assert_close(o32, ro, TOLERANCES[torch.float32][0], "o, fp32 operands")
    assert rel_err(o16, ro) > TOLERANCES[torch.float32][0] / 100, "fp16 operands should round"


def test_default_tiles_k128():
    """The defaults timed on the H100 (K = 128, V >= 64: bv 64, prepare_warps 2, state_stages 3)
    at an awkward T, gradients included; the interpreter ignores warps and stages, the tiles not."""
    sig = TAXONOMY_SIGS["scalar_delta"]
    shape = Shape(B=1, T=67, H=1, K=128, V=72)
    cfg = chunk_delta.default_config(sig, shape)
    assert (cfg["bv"], cfg["prepare_warps"], cfg["state_stages"]) == (64, 2, 3)
    x = random_core_inputs(sig, B=1, T=67, H=1, K=128, V=72, seed=31, requires_grad=True, device=DEVICE)
    _compare(sig, x, cfg)


@pytest.mark.parametrize("name", ["delta", "scalar_delta"])
def test_value_gate_scalar(name: str):
    """``CoreInputs.vg`` [B,T,H]: the value is ``v ⊙ vg``, multiplied as the UT transform loads
    ``v``; outputs, state and the gradients of v and vg (with everything else) against the
    reference, on a varlen batch with an awkward tail."""
    sig = TAXONOMY_SIGS[name]
    cu = torch.tensor([0, 5, 27, 41])
    x = random_core_inputs(sig, B=1, T=41, K=24, V=20, cu_seqlens=cu, requires_grad=True, seed=31)
    gen = torch.Generator().manual_seed(8)
    x.vg = (torch.rand(x.v.shape[:3], generator=gen, dtype=torch.float64) + 0.2).to(x.v.dtype).requires_grad_()
    cfg = {"chunk": 16}
    o, ht = chunk_delta.run(sig, x, cfg)
    ro, rht = core_reference(sig, x)
    tol_out, tol_grad = TOLERANCES[torch.float32]
    assert_close(o, ro, tol_out, "o")
    assert_close(ht, rht, tol_out, "final_state")
    w = torch.randn(ro.shape, generator=gen, dtype=ro.dtype)
    names = [n for n, t in x.tensors().items() if t.requires_grad]
    assert "vg" in names
    got = torch.autograd.grad((o * w).sum() + ht.sum(), [getattr(x, n) for n in names])
    ref = torch.autograd.grad((ro * w).sum() + rht.sum(), [getattr(x, n) for n in names])
    for n, a, b in zip(names, got, ref):
        assert_close(a, b, tol_grad, f"d{n}")


def test_deltanet_op_hands_beta_v_as_a_value_gate(monkeypatch):
    """The op passes DeltaNet's value ``β v`` as v and vg (no product in PyTorch), and its read-out
    comes out of the kernel in the output's dtype."""
    import torch.nn.functional as F

    from scandsl import ops

    seen = []
    real = chunk_delta.run

    def spy(sig, x, config=None):
        seen.append((x.vg, x.out_dtype))
        return real(sig, x, config)

    monkeypatch.setattr(chunk_delta, "run", spy)
    g = torch.Generator().manual_seed(4)
    q, v = torch.randn(1, 19, 2, 8, generator=g), torch.randn(1, 19, 2, 8, generator=g)
    k = F.normalize(torch.randn(1, 19, 2, 8, generator=g), dim=-1)
    beta = torch.rand(1, 19, 2, generator=g)
    o, _ = ops.deltanet(q.half(), k.half(), v.half(), beta, strategy="chunk")
    (vg, out_dtype), = seen
    assert vg is not None and vg.shape == (1, 19, 2) and out_dtype == torch.float16 == o.dtype
    ref, _ = ops.deltanet(q.half(), k.half(), v.half(), beta, strategy="reference")
    assert_close(o.float(), ref.float(), TOLERANCES[torch.float16][0], "o")
