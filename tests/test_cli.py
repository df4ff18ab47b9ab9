"""The scandsl command: list, show (with generated kernels), verify, docs."""

import pytest

from scandsl.cli import main


def test_list_shows_all_fifteen(capsys):
    assert main(["--width", "200", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("linear_attn", "mamba", "gated_deltanet", "gsa", "s4"):
        assert name in out


def test_show_prints_the_normal_form(capsys):
    assert main(["--width", "120", "show", "rwkv6"]) == 0
    out = capsys.readouterr().out
    assert "decay=key" in out and "readout=before" in out


@pytest.mark.parametrize(
    "strategy, marker", [("sequential", "@triton.jit"), ("scan", "@triton.jit"), ("chunk", "@triton.jit")]
)
def test_show_prints_generated_source(capsys, strategy, marker):
    assert main(["--width", "120", "show", "mamba2", "--strategy", strategy]) == 0
    out = capsys.readouterr().out
    assert marker in out and "tl." in out


def test_show_prints_the_variant_the_op_runs(capsys):
    """mamba on scan runs the module with dt ⊙ x multiplied in the kernel (dt read once, as the
    decay's gate) and D ⊙ x in its read-out."""
    assert main(["--width", "120", "show", "mamba", "--strategy", "scan"]) == 0
    out = capsys.readouterr().out
    assert "read-out (after, skip term)" in out and "b_w = b_v * b_gv" in out and "n_vg" not in out


@pytest.mark.parametrize("name", ["mamba", "s4", "mamba2"])
def test_source_options_match_the_op_call(monkeypatch, name):
    """What ``show`` decides from the spec is the module the op call loads from its tensors."""
    import torch
    from scandsl.bench._inputs import make_op_inputs, op_spec
    from scandsl.lowering import scan

    from scandsl._core import Shape
    from scandsl._entry import source_options
    from scandsl.cli import all_specs

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    loaded = []
    real = scan.kernels
    monkeypatch.setattr(scan, "kernels", lambda sig, **kw: loaded.append(kw) or real(sig, **kw))
    fn, _ = op_spec(name)
    fn(**make_op_inputs(name, Shape(1, 5, 1, 4, 8), torch.float32, "cpu", seed=0), strategy="scan")
    spec = all_specs()[name][1]
    (stage,) = spec.normal_form.stages
    assert loaded == [source_options(spec, stage, scan)]


def test_show_unknown_spec():
    with pytest.raises(SystemExit, match="unknown spec 'nope'"):
        main(["show", "nope"])


def test_verify_one_spec_passes(capsys):
    assert main(["--width", "160", "verify", "mamba2"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out


def test_docs_writes_taxonomy(tmp_path):
    out = tmp_path / "taxonomy.md"
    assert main(["docs", "--out", str(out)]) == 0
    assert "| `gla` |" in out.read_text()
