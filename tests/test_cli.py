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
