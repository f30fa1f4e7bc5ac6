"""docs/ingest-reasons.md against the code: the reasons a row is rejected for (validation's, in
their order, and the importers') and the columns every row needs are each in the doc, and the
doc names no other reason. (tests/test_delivery_format_doc.py checks the columns, labels and
spellings in docs/delivery-format.md.)"""

import re
from pathlib import Path

from flywheel.annotation.formats import REQUIRED
from flywheel.annotation.validation import REASONS

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "ingest-reasons.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start:end if end > 0 else None]


def _first_cells(section: str) -> list[str]:
    """The `name` in the first cell of each table row."""
    return re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M)


def test_every_row_reason_is_documented_in_the_order_it_is_checked():
    assert _first_cells(_section("Why a row is rejected")) == list(REASONS)


def test_every_importer_reason_is_documented():
    importers = (ROOT / "flywheel" / "annotation" / "importers.py").read_text()
    own = set(re.findall(r'_reject\("(import_[a-z_]+)"', importers))
    documented = _first_cells(_section("Reasons importers give"))
    assert own and sorted(documented) == sorted(own)


def test_every_column_every_row_needs_is_named_where_files_are_refused():
    refusal = _section("Files refused whole")  # the columns every row needs, all named there
    for alternatives in REQUIRED:
        assert all(f"`{a}`" in refusal for a in alternatives), alternatives


def test_the_doc_names_no_reason_the_code_does_not_know():
    importers = (ROOT / "flywheel" / "annotation" / "importers.py").read_text()
    known = set(REASONS) | set(re.findall(r'"(import_[a-z_]+)"', importers))
    named = set(re.findall(r"`((?:missing|invalid|import|duplicate|unknown|empty)_[a-z_]+)`",
                           DOC))
    assert named and named - known == set()
