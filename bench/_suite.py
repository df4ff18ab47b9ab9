"""The standard suite, in named parts that each fit one GPU command (< 8 minutes).

Every part measures the ceilings itself, so its floors come from the same run.

- ``std1`` / ``std2`` / ``std3`` — B=4, T=4096, H=16, K=V=128, bf16, fwd and fwd+bwd, for every
  chunk-legal op (ours ``chunk``), with FLA's / mamba_ssm's chunked kernels beside it;
- ``sweep-mamba2`` / ``sweep-gla`` — T from 1K to 64K at a fixed 64K tokens (B·T), fwd;
- ``scan`` — the Mamba-1 shape (B=4, T=4096, 16 heads × 128 channels = 2048 channels, N=16),
  ``mamba`` and ``s4`` on ``scan`` and ``sequential``;
- ``recurrent`` — ours ``sequential`` vs FLA's fused-recurrent kernels (mamba2, gla);
- ``decode`` — one token from a state (B=64), ours ``sequential`` vs FLA / mamba_ssm steps;
- ``alt1`` / ``alt2`` — every chunk-legal op of the standard suite on its *other* legal strategies
  (``sequential``, and ``scan`` where legal), same shape, fwd and fwd+bwd, no anchors: with the
  std parts, every spec × legal strategy of the taxonomy (mamba and s4 are in ``scan``);
- ``varlen`` — 64K tokens packed from documents of random lengths (``cu_seqlens``) against the
  same tokens as one dense sequence, mamba2 and gla on ``chunk`` (issue 9's ≤ 1.1× check);
- ``smoke`` — tiny shapes through every path (a first GPU run that checks the harness).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scandsl._core import Shape

from ._cases import op_case
from ._harness import Case

__all__ = ["PARTS", "part_cases", "STANDARD", "CHUNK_OPS"]

STANDARD = Shape(B=4, T=4096, H=16, K=128, V=128)
BF16 = torch.bfloat16
# every chunk-legal row, the ones with an anchor first
CHUNK_OPS = (
    "linear_attn", "retention", "mamba2", "gla", "rwkv6", "deltanet", "gated_deltanet",
    "gated_rfa", "abc", "dfw", "hgrn2", "mlstm", "gsa",
)  # fmt: skip
SWEEP_TOKENS = 1 << 16
SWEEP_T = (1024, 2048, 4096, 8192, 16384, 32768, 65536)


def _std(ops: tuple[str, ...]) -> Callable[[], list[Case]]:
    return lambda: [
        op_case(op, STANDARD, BF16, strategies=("chunk",), name=f"{op}", group="standard") for op in ops
    ]


def _sweep(op: str) -> list[Case]:
    return [
        op_case(
            op,
            Shape(SWEEP_TOKENS // T, T, 16, 128, 128),
            BF16,
            strategies=("chunk",),
            modes=("fwd",),
            name=f"{op} T={T}",
            group=f"sweep {op}",
            x=T,
        )  # fmt: skip
        for T in SWEEP_T
    ]


def _scan() -> list[Case]:
    shape = Shape(B=4, T=4096, H=16, K=16, V=128)  # K plays N, the state size per channel
    return [
        op_case("mamba", shape, BF16, strategies=("scan", "sequential"), anchor_kind="scan", name="mamba (Mamba-1 shape)"),
        op_case("s4", shape, BF16, strategies=("scan", "sequential"), anchor_kind=None, name="s4 (Mamba-1 shape)"),
    ]  # fmt: skip


def _recurrent() -> list[Case]:
    return [
        op_case(
            op,
            STANDARD,
            BF16,
            strategies=("sequential",),
            anchor_kind="recurrent",
            modes=("fwd",),
            name=f"{op} fused-recurrent",
            group="recurrent",
        )  # fmt: skip
        for op in ("mamba2", "gla")
    ]


def _decode() -> list[Case]:
    step = Shape(B=64, T=1, H=16, K=128, V=128)
    mamba = Shape(B=64, T=1, H=16, K=16, V=128)
    return [
        op_case("mamba2", step, BF16, strategies=("sequential",), anchor_kind="decode", modes=("fwd",),
                decode=True, name="mamba2 decode step", group="decode"),
        op_case("mamba", mamba, BF16, strategies=("sequential",), anchor_kind="decode", modes=("fwd",),
                decode=True, name="mamba decode step", group="decode"),
    ]  # fmt: skip


def _alternatives(ops: tuple[str, ...]) -> Callable[[], list[Case]]:
    """Each op on its legal strategies other than chunk (the std parts time chunk, with anchors)."""

    def cases() -> list[Case]:
        from ._inputs import op_spec

        out = []
        for op in ops:
            legal = tuple(s for s in op_spec(op)[1].legal_strategies if s not in ("reference", "chunk"))
            out.append(op_case(op, STANDARD, BF16, strategies=legal, anchor_kind=None, name=f"{op} (other strategies)",
                               group="alternatives"))  # fmt: skip
        return out

    return cases


VARLEN_DOCS = 40


def _varlen() -> list[Case]:
    shape = Shape(B=1, T=SWEEP_TOKENS, H=16, K=128, V=128)
    return [
        op_case(op, shape, BF16, strategies=("chunk",), anchor_kind=None, docs=docs,
                name=f"{op} 64K tokens " + (f"packed, {docs} docs" if docs else "dense"),
                group=f"varlen {op}")  # fmt: skip
        for op in ("mamba2", "gla")
        for docs in (None, VARLEN_DOCS)
    ]


def _smoke() -> list[Case]:
    tiny = Shape(B=2, T=200, H=2, K=64, V=64)
    cases = [op_case(op, tiny, BF16, strategies=("chunk", "sequential"), name=f"smoke {op}")
             for op in ("mamba2", "gla", "deltanet")]  # fmt: skip
    cases.append(op_case("mamba", Shape(2, 200, 2, 16, 64), BF16, strategies=("scan", "sequential"),
                         anchor_kind="scan", name="smoke mamba"))  # fmt: skip
    cases.append(op_case("mamba2", Shape(4, 1, 2, 64, 64), BF16, strategies=("sequential",), anchor_kind="decode",
                         modes=("fwd",), decode=True, name="smoke mamba2 decode"))  # fmt: skip
    return cases


PARTS: dict[str, Callable[[], list[Case]]] = {
    "smoke": _smoke,
    "std1": _std(CHUNK_OPS[:4]),
    "std2": _std(CHUNK_OPS[4:8]),
    "std3": _std(CHUNK_OPS[8:]),
    "sweep-mamba2": lambda: _sweep("mamba2"),
    "sweep-gla": lambda: _sweep("gla"),
    "scan": _scan,
    "recurrent": _recurrent,
    "decode": _decode,
    "varlen": _varlen,
    "alt1": _alternatives(CHUNK_OPS[:7]),
    "alt2": _alternatives(CHUNK_OPS[7:]),
}


def part_cases(name: str) -> list[Case]:
    if name not in PARTS:
        raise SystemExit(f"unknown part {name!r}; parts: {', '.join(PARTS)}")
    return PARTS[name]()
