"""docs/taxonomy.md is generated from the specs and must not drift from them."""

from pathlib import Path

from scandsl.cli import taxonomy_markdown


def test_taxonomy_doc_is_current():
    path = Path(__file__).parents[1] / "docs" / "taxonomy.md"
    assert path.read_text() == taxonomy_markdown(), "run `scandsl docs` to regenerate docs/taxonomy.md"


def test_fifteen_rows():
    text = taxonomy_markdown()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == 15
