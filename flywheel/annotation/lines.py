"""A delivery read line by line in Python: the general path, taken only when the columnar readers
of delivery.py cannot read a file whole (a line in another encoding, a key given twice, a number
or object where text belongs, a malformed CSV record). Every value is checked here: what is not
text where text belongs gives its row a reason (invalid_encoding, duplicate_key, invalid_type),
kept in the row's `reject_reason` as "<reason>: <column>", so the row is quarantined with it."""

from __future__ import annotations

import csv
import io
import json
import re

import pyarrow as pa

from flywheel.annotation.formats import COLUMNS, IDS, JSON_WS, NUMBERS
from flywheel.errors import DataError

SURROGATE = re.compile("[\ud800-\udfff]")  # a lone surrogate: bytes that were not UTF-8


def read_lines(data: bytes, filename: str, fmt: str) -> tuple[pa.Table, dict[int, str]]:
    """Every row that parses (text columns, `reject_reason` set where a value is not what its
    column holds), and the rows that do not, as delivered, by index."""
    rows, raw, not_utf8 = csv_rows(data, filename) if fmt == "csv" else jsonl_rows(data)
    if rows and not_utf8 == len(rows):
        raise DataError(f"{filename}: not UTF-8 text (no row is); re-export it as UTF-8")
    malformed = {i: raw[i] for i, r in enumerate(rows) if r is None}
    names = list(dict.fromkeys(k for r in rows if r for k in r))
    if not names:
        return pa.table({c: pa.nulls(len(rows), pa.string()) for c in COLUMNS}), malformed
    return pa.table({k: pa.array([None if r is None else r.get(k) for r in rows], pa.string())
                     for k in names}), malformed


def _clean(text: str) -> str:
    return SURROGATE.sub("\ufffd", text)


def _value(name: str, value) -> tuple[str | None, str | None]:
    """(the value as text, the reason it cannot be used) for one delivered JSON value."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return (_clean(value), "invalid_encoding") if SURROGATE.search(value) else (value, None)
    if type(value) is int and name in IDS:
        return str(value), None
    if type(value) in (int, float) and name in NUMBERS:  # its range is checked later
        return str(value), None
    if name == "prompt" and isinstance(value, list):  # chat messages, checked later
        loose = json.dumps(value, ensure_ascii=False)
        return (_clean(loose), "invalid_encoding") if SURROGATE.search(loose) else (
            json.dumps(value), None)
    return _clean(json.dumps(value, ensure_ascii=False)), "invalid_type"


def _json_row(text: str, bad_bytes: bool) -> dict | None:
    """One JSONL line as a row of texts, or None when it is not a JSON object."""
    twice: list[str] = []

    def pairs(items):
        keys = [k for k, _ in items]
        twice.extend(k for k in dict.fromkeys(keys) if keys.count(k) > 1)
        return dict(items)

    try:
        value = json.loads(text, object_pairs_hook=pairs)
        if not isinstance(value, dict):
            return None
        row, problem = {}, "invalid_encoding: the line is not UTF-8" if bad_bytes else None
        if twice and problem is None:
            problem = f"duplicate_key: {_clean(twice[0])}"
        for key, v in value.items():
            name = _clean(key)
            row[name], bad = _value(name, v)
            if bad and problem is None and name in COLUMNS:
                problem = f"{bad}: {name}"
    except (ValueError, RecursionError):  # not JSON, or nested too deep to read
        return None
    if problem:
        row["reject_reason"] = problem
    return row


def jsonl_rows(data: bytes) -> tuple[list[dict | None], list[str], int]:
    """Rows of a JSONL file (None where a line is not a JSON object), the lines as delivered
    and how many are not UTF-8. Lines end at "\\n" only (a U+2028 inside a text does not end
    one); blank lines, of JSON whitespace, are not rows."""
    rows, raw, not_utf8 = [], [], 0
    for line in data.split(b"\n"):
        if not line.strip(JSON_WS.encode()):
            continue
        try:
            text, bad_bytes = line.decode("utf-8"), False
        except UnicodeDecodeError:
            text, bad_bytes = line.decode("utf-8", "replace"), True
            not_utf8 += 1
        text = text.rstrip("\r")
        raw.append(text)
        rows.append(_json_row(text, bad_bytes))
    return rows, raw, not_utf8


def csv_rows(data: bytes, filename: str) -> tuple[list[dict | None], list[str], int]:
    """Rows of a CSV file (None where a record has another number of fields than the header),
    the records as delivered and how many are not UTF-8. Empty cells are missing values."""
    text = data.decode("utf-8", "surrogateescape")
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, raw, not_utf8 = [], [], 0
    try:
        header = next((r for r in reader if r), [])
        if any(SURROGATE.search(h) for h in header):
            raise DataError(f"{filename}: the header is not UTF-8 text; re-export the file as "
                            "UTF-8")
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            raw.append(_clean(",".join(record)))
            not_utf8 += any(SURROGATE.search(v) for v in record)
            if len(record) != len(header):
                rows.append(None)
                continue
            row = {k: (_clean(v) if v != "" else None) for k, v in zip(header, record)}
            bad = next((k for k, v in zip(header, record) if SURROGATE.search(v)), None)
            if bad is not None:
                row["reject_reason"] = f"invalid_encoding: {bad}"
            rows.append(row)
    except csv.Error as err:
        raise DataError(f"{filename}: not readable as CSV ({err}); export it again as CSV "
                        "with a header row") from None
    return rows, raw, not_utf8
