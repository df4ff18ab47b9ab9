"""Decoding: scandsl.step, token by token, agrees with the full-sequence op (every row)."""

import pytest

import scandsl
from scandsl._validate import _built_for
from scandsl.cli import all_specs
from scandsl.testing import random_spec_inputs, rel_err


@pytest.mark.parametrize("name", list(all_specs()))
@pytest.mark.parametrize("strategy", ["sequential", "reference"])
def test_step_agrees_with_full_sequence(name, strategy):
    spec = all_specs()[name][1]
    if strategy != "reference" and not _built_for(spec, strategy):
        pytest.skip(f"{strategy} not built")
    T = 5
    x = random_spec_inputs(spec, B=2, T=T, H=2, sizes={"K": 6, "V": 7, "M": 3}, seed=3)
    o_full, s_full = scandsl.run(spec, **x, strategy=strategy, output_final_state=True)
    state = None
    for t in range(T):
        tok = {n: (v[:, t] if spec.input_decls[n].time else v) for n, v in x.items()}
        o_t, state = scandsl.step(spec, state, strategy=strategy, **tok)
        assert rel_err(o_t, o_full[:, t]) <= 2e-4, f"token {t}"
    for a, b in zip(
        state if isinstance(state, tuple) else (state,), s_full if isinstance(s_full, tuple) else (s_full,)
    ):
        assert rel_err(a, b) <= 2e-4


def test_step_rejects_a_time_axis():
    spec = all_specs()["mamba2"][1]
    x = random_spec_inputs(spec, B=1, T=3, H=2)
    with pytest.raises(ValueError, match=r"q: expected one token \[B,H,K\]"):
        scandsl.step(spec, None, strategy="reference", **x)
