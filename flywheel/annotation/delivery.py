"""The delivery format: a batch file (JSONL, optionally .gz, CSV or Parquet) read into one
Arrow table of text columns, whatever the file's own types; rows that cannot be parsed at all are
returned apart, as delivered, so ingest can quarantine them. The columns are described in
`flywheel/annotation/ingest.py`."""

from __future__ import annotations

import csv
import gzip
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

from flywheel.errors import DataError
from flywheel.lake.schemas import content_id

COLUMNS = (
    "prompt_id", "prompt", "response_a", "response_b", "sample_id_a", "sample_id_b", "chosen",
    "strength", "criterion", "safety_label", "annotator", "source", "split", "reject_reason",
)
SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")


def _format_of(filename: str) -> tuple[str, bool]:
    name = filename.lower()
    gz = name.endswith(".gz")
    name = name.removesuffix(".gz")
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return ("jsonl" if suffix in (".jsonl", ".ndjson", ".json") else suffix[1:]), gz
    raise DataError(
        f"{filename}: cannot tell the file format; name the file with one of "
        f"{', '.join(SUFFIXES)} (optionally + .gz)"
    )


def _as_text_column(col: pa.ChunkedArray) -> pa.Array:
    """Strings stay; nested values (a prompt as a message list) become JSON; scalars text."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col.cast(pa.string())
    if pa.types.is_null(col.type):
        return pa.nulls(len(col), pa.string())
    if pa.types.is_nested(col.type):
        return pa.array([None if v is None else json.dumps(v) for v in col.to_pylist()],
                        pa.string())
    return col.cast(pa.string())


def _normalise(t: pa.Table) -> tuple[pa.Table, list[str]]:
    ignored = sorted(c for c in t.column_names if c not in COLUMNS)
    cols = {c: (_as_text_column(t.column(c)) if c in t.column_names
                else pa.nulls(t.num_rows, pa.string())) for c in COLUMNS}
    return pa.table(cols), ignored


def _jsonl_slow(text: str) -> tuple[list[dict | None], list[str]]:
    rows, raw = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        raw.append(line)
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = None
        rows.append(value if isinstance(value, dict) else None)
    return rows, raw


def _csv_slow(text: str) -> tuple[list[dict | None], list[str]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None) or []
    rows, raw = [], []
    for record in reader:
        if not any(cell.strip() for cell in record):
            continue
        raw.append(",".join(record))
        if len(record) != len(header):
            rows.append(None)
        else:
            rows.append({k: (v if v != "" else None) for k, v in zip(header, record)})
    return rows, raw


def read_delivery(data: bytes, filename: str) -> tuple[pa.Table, dict[int, str]]:
    """The delivered rows as a table of text columns (COLUMNS, plus `row_index`), and the rows
    that could not be parsed at all, by index, as delivered. Columns outside COLUMNS are listed
    in the table's metadata under b"ignored"."""
    fmt, gz = _format_of(filename)
    if gz:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise DataError(f"{filename}: not a readable gzip file ({err})") from None
    malformed: dict[int, str] = {}
    try:
        if fmt == "parquet":
            t = pq.read_table(io.BytesIO(data))
        elif fmt == "csv":
            bad = []
            t = pacsv.read_csv(
                io.BytesIO(data),
                parse_options=pacsv.ParseOptions(invalid_row_handler=lambda r: bad.append(r)
                                                 or "skip"),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in COLUMNS}, strings_can_be_null=True),
            )
            if bad:
                raise pa.ArrowInvalid("invalid rows")
        else:
            t = pajson.read_json(io.BytesIO(data)) if data.strip() else pa.table({})
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
        if fmt == "parquet":
            raise DataError(f"{filename}: not a readable Parquet file") from None
        found = _jsonl_bad_lines(data) if fmt == "jsonl" else None
        t, malformed = found if found is not None else _read_slow(data, filename, fmt)
    n = t.num_rows
    t, ignored = _normalise(t)
    t = t.append_column("row_index", pa.array(range(n), pa.int64()))
    t = t.replace_schema_metadata({b"ignored": json.dumps(ignored).encode()})
    return t, malformed


def _jsonl_bad_lines(data: bytes) -> tuple[pa.Table, dict[int, str]] | None:
    """A JSONL file some of whose lines are not JSON objects, read without parsing every line
    in Python: DuckDB's JSON validator finds those lines and Arrow parses the others. None when
    that is not enough (not UTF-8, or values Arrow cannot type): the caller then reads line by
    line."""
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
        found = con.sql(r"SELECT regexp_matches(line, '^\s*$') AS blank, json_valid(line) "
                        r"AND regexp_matches(line, '^\s*\{') AS ok FROM lines").fetchnumpy()
    finally:
        con.close()
    blank, ok = found["blank"].astype(bool), found["ok"].astype(bool)
    rows = np.flatnonzero(~blank)  # blank lines are not rows
    ok_rows = ok[rows]
    good = np.flatnonzero(ok_rows)
    malformed = {int(r): text[int(rows[r])].as_py().rstrip("\r\n")
                 for r in np.flatnonzero(~ok_rows)}
    if not len(good):
        return _empty_rows(len(rows)), malformed
    kept = pc.filter(lines, pa.array(ok & ~blank))  # the good lines, back to back
    start, stop = np.frombuffer(kept.buffers()[1], np.int64)[[kept.offset, kept.offset + len(kept)]]
    try:
        t = pajson.read_json(pa.BufferReader(kept.buffers()[2].slice(start, stop - start)))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if t.num_rows != len(good):
        return None
    # each malformed line a row of nulls, in its place; slices, not a take (3x slower)
    null_row = pa.table({f.name: pa.nulls(1, f.type) for f in t.schema})
    pieces, done = [], 0
    for k, i in enumerate(sorted(malformed)):
        pieces += [t.slice(done, i - k - done), null_row]
        done = i - k
    return pa.concat_tables([*pieces, t.slice(done)]), malformed


def _read_slow(data: bytes, filename: str, fmt: str) -> tuple[pa.Table, dict[int, str]]:
    """Line by line in Python: every row that parses, and the others as delivered."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{filename}: not UTF-8 text ({err}); re-export it as UTF-8") from None
    rows, raw = (_csv_slow if fmt == "csv" else _jsonl_slow)(text)
    malformed = {i: raw[i] for i, r in enumerate(rows) if r is None}
    names = sorted({k for r in rows if r for k in r})
    t = pa.table({k: pa.array([None if r is None or r.get(k) is None else
                               r[k] if isinstance(r[k], str) else json.dumps(r[k])
                               for r in rows], pa.string()) for k in names})
    return (t if names else _empty_rows(len(rows))), malformed


def _empty_rows(n: int) -> pa.Table:
    return pa.table({c: pa.nulls(n, pa.string()) for c in COLUMNS})


# prompts given inline ------------------------------------------------------------------------
def _messages(prompt: str) -> list[dict] | None:
    """A delivered prompt as chat messages, or None when it is a malformed message list."""
    text = prompt.strip()
    if text.startswith("["):
        try:
            msgs = json.loads(text)
        except json.JSONDecodeError:
            return None
        ok = (isinstance(msgs, list) and msgs and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str) for m in msgs) and msgs[-1]["role"] == "user")
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


# labels: a few distinct values per column, normalised once each ------------------------------
_ALIASES = {"unsure": "negligibly_better", "negligibly_better_or_unsure": "negligibly_better",
            "negligibly_better_unsure": "negligibly_better"}


def _label(value: str | None) -> str | None:
    """'Significantly better', 'chosen-safe other-unsafe' -> snake_case; blank -> None."""
    if value is None or not value.strip():
        return None
    key = "_".join(value.strip().lower().replace("-", " ").replace("/", " ").split())
    return _ALIASES.get(key, key)


def _stripped(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


def _map_distinct(col: pa.Array, fn) -> pa.Array:
    """fn applied to each distinct value of a (low-cardinality) text column."""
    encoded = pa.chunked_array(col).combine_chunks().dictionary_encode()
    mapped = pa.array([fn(v) for v in encoded.dictionary.to_pylist()], pa.string())
    out = pc.take(mapped, encoded.indices)
    missing = fn(None)  # nulls are not in the dictionary
    return out if missing is None else pc.fill_null(out, missing)


def normalised_labels(t: pa.Table) -> pa.Table:
    """Adds `<column>_n` for the label columns: snake_case labels, lower-case choice and split,
    trimmed annotator and source (in-house when blank)."""
    labels = {"chosen": _label, "strength": _label, "criterion": _label,
              "safety_label": _label, "split": _label, "annotator": _stripped,
              "source": lambda v: _stripped(v) or "in-house"}
    for name, fn in labels.items():
        t = t.append_column(f"{name}_n", _map_distinct(t.column(name), fn))
    return t
