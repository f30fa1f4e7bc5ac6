"""The delivery format: a batch file (JSONL, optionally .gz, CSV or Parquet) read into one
Arrow table of text columns; rows that cannot be parsed at all are returned apart, as delivered,
so ingest can quarantine them. The columns are described in `flywheel/annotation/ingest.py` and
docs/ingest-reasons.md.

A file is first checked whole (formats.py: its bytes against its name, its columns), then read
columnar (Arrow, DuckDB) when every value is what its column holds; otherwise line by line
(lines.py), which gives each row whose values are not usable its reason."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from json.encoder import encode_basestring_ascii

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from flywheel.annotation.formats import (
    COLUMNS,
    IDS,
    JSON_WS,
    NUMBERS,
    SUFFIXES,
    check_required,
    check_unique,
    format_of,
    unwrap,
)
from flywheel.annotation.lines import SURROGATE, read_lines
from flywheel.errors import DataError
from flywheel.lake.schemas import content_id

__all__ = ["COLUMNS", "SUFFIXES", "inline_prompts", "read_delivery"]


def read_delivery(data: bytes, filename: str) -> tuple[pa.Table, dict[int, str]]:
    """The delivered rows as a table of text columns (COLUMNS, plus `row_index`), and the rows
    that could not be parsed at all, by index, as delivered. Columns outside COLUMNS are listed
    in the table's metadata under b"ignored". Raises DataError for a file that cannot be read
    as a delivery (named as another format, not UTF-8, a column named twice, a column every row
    needs missing), before anything is written."""
    fmt, gz = format_of(filename)
    data = unwrap(data, filename, fmt, gz)
    if fmt == "parquet":
        t, malformed = _read_parquet(data, filename), {}
    elif fmt == "csv":
        t, malformed = _read_csv(data, filename)
    else:
        t, malformed = _read_jsonl(data, filename)
    check_unique(t.column_names, filename)
    if t.num_rows > len(malformed):  # some row was read: its columns can be judged
        check_required(t.column_names, filename, fmt)
    n = t.num_rows
    t, ignored = _normalise(t)
    t = t.append_column("row_index", pa.array(range(n), pa.int64()))
    t = t.replace_schema_metadata({b"ignored": json.dumps(ignored).encode()})
    return t, malformed


# columns as text -----------------------------------------------------------------------------
def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_number(name: str, t: pa.DataType) -> bool:
    """A number in a number column (seconds), or a whole number in an id column."""
    return ((name in NUMBERS and (pa.types.is_integer(t) or pa.types.is_floating(t)))
            or (name in IDS and pa.types.is_integer(t)))


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _as_text(name: str, col: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.Array | None]:
    """(the column as text, each row's reason where its value is not what the column holds:
    invalid_encoding or invalid_type, "<reason>: <column>"). Text is text; a whole number is
    text in an id column, any number in a number column (seconds); a prompt may be a list of
    messages (as JSON, checked later)."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if _is_text(col.type):
        return col.cast(pa.string()), None
    if pa.types.is_null(col.type):
        return pa.chunked_array([pa.nulls(len(col), pa.string())]), None
    if _is_number(name, col.type):
        return col.cast(pa.string()), None
    if name == "prompt" and _is_list(col.type):
        return pa.chunked_array([pa.array([None if v is None else json.dumps(v)
                                           for v in col.to_pylist()], pa.string())]), None
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        try:
            return col.cast(pa.string()), None  # checks UTF-8
        except pa.ArrowInvalid:
            return _decoded(name, col.to_pylist())
    try:
        text = col.cast(pa.string()) if not pa.types.is_nested(col.type) else None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        text = None
    if text is None:
        text = pa.chunked_array([pa.array([None if v is None else json.dumps(v, default=str)
                                           for v in col.to_pylist()], pa.string())])
    return text, pc.if_else(pc.is_valid(col), pa.scalar(f"invalid_type: {name}"),
                            pa.scalar(None, pa.string()))


def _decoded(name: str, values: list) -> tuple[pa.ChunkedArray, pa.Array]:
    """Bytes as text, each value that is not UTF-8 with the reason invalid_encoding."""
    text, bad = [], []
    for v in values:
        try:
            text.append(None if v is None else v.decode("utf-8"))
            bad.append(False)
        except UnicodeDecodeError:
            text.append(v.decode("utf-8", "replace"))
            bad.append(True)
    return pa.chunked_array([pa.array(text, pa.string())]), pc.if_else(
        pa.array(bad), pa.scalar(f"invalid_encoding: {name}"), pa.scalar(None, pa.string()))


def _normalise(t: pa.Table) -> tuple[pa.Table, list[str]]:
    """COLUMNS as text (absent ones all null); a value that is not what its column holds puts
    its reason in `reject_reason`. Also the names of the columns outside COLUMNS."""
    ignored = sorted(c for c in t.column_names if c not in COLUMNS)
    cols, reasons = {}, []
    for c in COLUMNS:
        if c in t.column_names:
            cols[c], reason = _as_text(c, t.column(c))
            if reason is not None:
                reasons.append(reason)
        else:
            cols[c] = pa.nulls(t.num_rows, pa.string())
    if reasons:  # the first column's reason, before any the delivery gave itself
        cols["reject_reason"] = pc.coalesce(*map(_flat, reasons), _flat(cols["reject_reason"]))
    return pa.table(cols), ignored


def _flat(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _empty_rows(n: int) -> pa.Table:
    return pa.table({c: pa.nulls(n, pa.string()) for c in COLUMNS})


# the formats ---------------------------------------------------------------------------------
def _read_parquet(data: bytes, filename: str) -> pa.Table:
    try:
        t = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as err:
        raise DataError(f"{filename}: a damaged Parquet file ({err}); export it again") from None
    for i, name in enumerate(t.column_names):  # Parquet readers do not check UTF-8
        if name in COLUMNS and _is_text(t.schema.field(i).type):
            try:
                t.column(i).validate(full=True)
            except pa.ArrowInvalid:
                t = t.set_column(i, name, t.column(i).cast(pa.large_binary()))
    return t


def _read_csv(data: bytes, filename: str) -> tuple[pa.Table, dict[int, str]]:
    header = _csv_header(data, filename)
    check_unique(header, filename)
    bad = []
    try:
        t = pacsv.read_csv(
            io.BytesIO(data),
            parse_options=pacsv.ParseOptions(invalid_row_handler=lambda r: bad.append(r)
                                             or "skip"),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header}, strings_can_be_null=True,
                null_values=[""]),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
        return read_lines(data, filename, "csv")
    return (t, {}) if not bad and t.column_names == header else read_lines(data, filename, "csv")


def _csv_header(data: bytes, filename: str) -> list[str]:
    """The header record, as the line-by-line reader reads it."""
    text = data[:1 << 20].decode("utf-8", "surrogateescape")
    try:
        header = next((r for r in csv.reader(io.StringIO(text, newline="")) if r), [])
    except csv.Error:
        return []
    if any(SURROGATE.search(h) for h in header):
        raise DataError(f"{filename}: the header is not UTF-8 text; re-export the file as UTF-8")
    return header


def _read_jsonl(data: bytes, filename: str) -> tuple[pa.Table, dict[int, str]]:
    if not data.strip(JSON_WS.encode()):
        return _empty_rows(0), {}
    if not _utf8(data):  # Arrow's JSON reader does not check: the lines tell which are not
        return read_lines(data, filename, "jsonl")
    deep = _deep_lines(data)
    if not deep:
        try:
            t = pajson.read_json(io.BytesIO(data))
            if _columnar(t):
                return t, {}
        except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
            pass
    found = _jsonl_bad_lines(data, deep)
    return found if found is not None else read_lines(data, filename, "jsonl")


def _utf8(data: bytes) -> bool:
    if data.isascii():  # ten times faster than checking UTF-8
        return True
    whole = pa.Array.from_buffers(pa.large_binary(), 1, [
        None, pa.py_buffer(np.array([0, len(data)], np.int64)), pa.py_buffer(data)])
    try:
        whole.cast(pa.large_string())
    except pa.ArrowInvalid:
        return False
    return True


def _columnar(t: pa.Table) -> bool:
    """Whether Arrow read every delivery column as the delivery gave it: text (not a text
    Arrow took for a timestamp), a whole number in an id column, a number of seconds, a list
    as the prompt. Else
    the file is read line by line, which tells each value apart."""
    for f in t.schema:
        if f.name in COLUMNS and not (
                _is_text(f.type) or pa.types.is_null(f.type) or _is_number(f.name, f.type)
                or (f.name == "prompt" and _is_list(f.type))):
            return False
    return True


def _json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


# Arrow's JSON parser recurses into nested values: some 20,000 levels overflow its stack (a
# crash, not an error). A line that deep has that many opening brackets; the few lines with
# MAX_DEPTH or more are parsed by Python's json first, which stops at its recursion limit.
MAX_DEPTH = 512
_NOT_OPENERS = bytes(c for c in range(256) if c not in b"[{\n")


def _deep_lines(data: bytes) -> list[int]:
    """The lines (by position, blank ones counted) nested too deep to give to Arrow."""
    marks = np.frombuffer(data.translate(None, _NOT_OPENERS), np.uint8)
    if len(marks) < MAX_DEPTH:
        return []
    newlines = np.flatnonzero(marks == 10)
    openers = np.diff(np.concatenate([[-1], newlines, [len(marks)]])) - 1
    suspects = np.flatnonzero(openers >= MAX_DEPTH)
    if not len(suspects):
        return []
    ends = np.concatenate([np.flatnonzero(np.frombuffer(data, np.uint8) == 10), [len(data)]])
    deep = []
    for i in suspects.tolist():
        start = int(ends[i - 1]) + 1 if i else 0
        try:
            json.loads(data[start:int(ends[i])].decode("utf-8", "replace"))
        except RecursionError:
            deep.append(i)
        except ValueError:
            pass
    return deep


def _jsonl_bad_lines(data: bytes, deep: list[int] = ()) -> tuple[pa.Table, dict[int, str]] | None:
    """A JSONL file some of whose lines are not JSON objects (or are nested too deep: `deep`),
    read without parsing every line in Python: DuckDB's JSON validator finds those lines and
    Arrow parses the others. None when that is not enough (not UTF-8, or values Arrow cannot
    read as the delivery gave them): the caller then reads line by line."""
    # the lines as one Arrow array over the delivered bytes (each keeps its newline): no copy
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1
    if not len(ends) or ends[-1] != len(data):
        ends = np.append(ends, len(data))
    offsets = pa.py_buffer(np.concatenate([[0], ends]).astype(np.int64))
    lines = pa.Array.from_buffers(pa.large_binary(), len(ends),
                                  [None, offsets, pa.py_buffer(data)])
    try:
        text = lines.cast(pa.large_string())  # validates UTF-8
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    con = duckdb.connect()
    try:
        con.register("lines", pa.table({"line": text}))
        # a valid JSON text that opens with "{" is an object (json_type would parse it again)
        found = con.sql(r"SELECT regexp_matches(line, '^[ \t\r\n]*$') AS blank, json_valid(line) "
                        r"AND regexp_matches(line, '^[ \t\r\n]*\{') AS ok FROM lines").fetchnumpy()
    finally:
        con.close()
    blank, ok = found["blank"].astype(bool), found["ok"].astype(bool)
    ok[list(deep)] = False
    rows = np.flatnonzero(~blank)  # blank lines are not rows
    ok_rows = ok[rows]
    good = np.flatnonzero(ok_rows)
    malformed = {int(r): text[int(rows[r])].as_py().rstrip("\r\n")
                 for r in np.flatnonzero(~ok_rows)}
    if any(_json_object(line) for line in malformed.values()):
        return None  # a line Python reads (e.g. a lone surrogate escape): its row needs a reason
    if not len(good):
        return _empty_rows(len(rows)), malformed
    kept = pc.filter(lines, pa.array(ok & ~blank))  # the good lines, back to back
    start, stop = np.frombuffer(kept.buffers()[1], np.int64)[[kept.offset, kept.offset + len(kept)]]
    try:
        t = pajson.read_json(pa.BufferReader(kept.buffers()[2].slice(start, stop - start)))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if t.num_rows != len(good) or not _columnar(t):
        return None
    # each malformed line a row of nulls, in its place; slices, not a take (3x slower)
    null_row = pa.table({f.name: pa.nulls(1, f.type) for f in t.schema})
    pieces, done = [], 0
    for k, i in enumerate(sorted(malformed)):
        pieces += [t.slice(done, i - k - done), null_row]
        done = i - k
    return pa.concat_tables([*pieces, t.slice(done)]), malformed


# prompts given inline ------------------------------------------------------------------------
def _messages(prompt: str) -> list[dict] | None:
    """A delivered prompt as chat messages, or None when it is a malformed message list."""
    text = prompt.strip()
    if text.startswith("["):
        try:
            msgs = json.loads(text)
        except (ValueError, RecursionError):
            return None
        ok = (isinstance(msgs, list) and msgs and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str) and not SURROGATE.search(m["content"])
            for m in msgs) and msgs[-1]["role"] == "user")
        return [{"role": m["role"], "content": m["content"]} for m in msgs] if ok else None
    return [{"role": "user", "content": text}]


def _user_prompt_id(text: str) -> str:
    """content_id("prompt", [{"role": "user", "content": text}]) without json.dumps' generic
    encoder (3x faster; tests/test_delivery_bad_lines.py checks they agree)."""
    blob = '["prompt",[{"content":' + encode_basestring_ascii(text) + ',"role":"user"}]]'
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def inline_prompts(t: pa.Table) -> tuple[pa.Table, dict[str, list[dict]]]:
    """Adds `prompt_key` (the prompt id of an inline prompt; '' when malformed) and returns the
    messages of each new prompt id."""
    keys, found = [], {}
    cache: dict[str, str] = {}
    for value in t.column("prompt").to_pylist():
        if value is None:
            keys.append(None)
            continue
        if value not in cache:
            text = value.strip()
            if text and not text.startswith("["):  # plain text, by far the commonest
                cache[value] = pid = _user_prompt_id(text)
                found[pid] = [{"role": "user", "content": text}]
                keys.append(pid)
                continue
            msgs = _messages(value) if text else []
            if msgs is None:
                cache[value] = ""
            else:
                pid = content_id("prompt", msgs)
                cache[value] = pid
                found[pid] = msgs
        keys.append(cache[value])
    return t.append_column("prompt_key", pa.array(keys, pa.string())), found
