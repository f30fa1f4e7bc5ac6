"""docs/delivery-format.md against the code, both ways: the file suffixes, the columns (in
order), the labels of each label column and their spellings are exactly the code's (each
documented spelling read as its label by the ingest's own reader, each other name the reader
knows documented), every reason the page names is one the code knows, and every example row,
delivered to a real lake, ends as the page says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flywheel.annotation.formats import COLUMNS, SUFFIXES
from flywheel.annotation.ingest import ingest_bytes
from flywheel.annotation.labels import LABEL_ALIASES, label_key, read_label
from flywheel.annotation.validation import CHOICES, EXCLUDED_LABEL, REASONS, SPLITS
from flywheel.lake.schemas import CRITERIA, SAFETY_LABELS, STRENGTHS
from flywheel.lake.store import Lake

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "delivery-format.md").read_text(encoding="utf-8")
LABELS = {"chosen": CHOICES, "strength": STRENGTHS, "criterion": CRITERIA,
          "safety_label": SAFETY_LABELS + (EXCLUDED_LABEL,), "split": SPLITS}


def _section(title: str) -> str:
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start:end if end > 0 else None]


def _table(section: str) -> list[list[str]]:
    """The body rows of the section's table, as cells (header and rule left out)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ")]
    return rows[1:]


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def test_the_file_suffixes_are_the_code_s():
    named = set(re.findall(r"`(\.[a-z]+)`", _section("Files")))
    assert named == set(SUFFIXES) | {".gz"}


def test_the_columns_are_the_code_s_in_order():
    assert [_ticked(r[0])[0] for r in _table(_section("Columns"))] == list(COLUMNS)


def test_the_labels_are_the_code_s_and_each_spelling_is_read_as_its_label():
    rows = _table(_section("Labels and their spellings"))
    documented = {(_ticked(r[0])[0], _ticked(r[1])[0]) for r in rows}
    assert documented == {(c, v) for c, values in LABELS.items() for v in values}
    spellings: dict[str, list[str]] = {}
    for column, label, also in rows:
        label = _ticked(label)[0]
        names = [s for s in _ticked(also) if s not in REASONS]
        assert names, label
        for s in names:
            assert read_label(s) == label, (s, label)
        spellings.setdefault(label, []).extend(names)
    for alias, label in LABEL_ALIASES.items():  # every other name the reader knows is here
        assert any(label_key(s) == alias for s in spellings[label]), alias


def test_the_columns_table_names_each_label_column_s_values():
    cells = {_ticked(r[0])[0]: r[2] for r in _table(_section("Columns"))}
    for column, values in LABELS.items():
        assert all(f"`{v}`" in cells[column] for v in values), column


def test_every_reason_named_is_one_the_code_knows():
    named = set(re.findall(r"`((?:missing|invalid|unknown|empty|excluded|identical|"
                           r"sample_prompt|duplicate|oversize)_[a-z_]+)`", DOC))
    assert named and named - set(REASONS) == set()


def _examples() -> tuple[dict, list[tuple[str, str, str, str]]]:
    section = _section("Examples")
    base = json.loads(re.search(r"```json\n(.*?)\n```", section, flags=re.S).group(1))
    return base, [tuple(r) for r in _table(section)]


def _value(cell: str):
    """A delivered-value cell: JSON in backticks, or *absent*."""
    return ... if cell == "*absent*" else json.loads(_ticked(cell)[0])


def test_every_example_ends_as_the_page_says(tmp_path):
    base, examples = _examples()
    assert len(examples) >= 30
    lines, expected = [], []
    for n, (column, value, with_, outcome) in enumerate(examples):
        row = {**base, "response_a": f"{base['response_a']} (example {n})",
               "response_b": f"{base['response_b']} (example {n})"}
        row.update(json.loads(_ticked(with_)[0]) if with_ else {})
        column, value = _ticked(column)[0], _value(value)
        if value is ...:
            row.pop(column, None)
        else:
            row[column] = value
        lines.append(json.dumps(row))
        expected.append((column, outcome, row))
    lake = Lake.open(str(tmp_path / "lake"))
    result = ingest_bytes(lake, ("\n".join(lines) + "\n").encode(), "examples.jsonl")
    assert result.delivered == len(examples)
    rejected = {q["row_index"]: q["reason"] for q in lake.rows("quarantine")}
    stored = {}
    for c in lake.rows("comparisons"):
        n = int(re.search(r"\(example (\d+)\)$", c["chosen_text"]).group(1))
        stored[n] = c
    for n, (column, outcome, row) in enumerate(expected):
        where = f"example {n}: {column} {outcome}"
        if outcome.startswith("rejected: "):
            assert rejected.get(n) == _ticked(outcome)[0], where
            continue
        assert n in stored and n not in rejected, where
        if outcome == "accepted":
            continue
        want = _ticked(outcome)[0]
        c = stored[n]
        if column == "chosen":
            got = "a" if c["chosen_text"] == row["response_a"] else "b"
        else:
            got = c[column]
        if want != "null" and column == "seconds":
            want = float(want)  # a number column: stored as a number
        assert got == (None if want == "null" else want), where


@pytest.mark.parametrize("outcome", ["accepted", "rejected"])
def test_the_examples_show_both_outcomes_for_every_label_column(outcome):
    _, examples = _examples()
    for column in LABELS:
        assert any(_ticked(c)[0] == column and o.startswith(outcome)
                   for c, _, _, o in examples), (column, outcome)
