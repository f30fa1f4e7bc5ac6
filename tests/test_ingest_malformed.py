"""Malformed deliveries are refused, never a traceback: a row that cannot be used gets its
reason (and the column it names), a file that cannot be read as a delivery is one DataError
naming the fix, raised before anything is written (no batch recorded, no raw copy kept)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.annotation.ingest import ingest_bytes
from flywheel.config import AnnotationConfig
from flywheel.errors import DataError
from flywheel.lake.store import Lake

CFG = AnnotationConfig(heldout_fraction=0.0)
ROW = {"prompt": "How do I boil an egg?", "response_a": "Eight minutes in boiling water.",
       "response_b": "Eggs.", "chosen": "a", "strength": "better", "criterion": "helpfulness",
       "annotator": "ann-1"}
GOOD = json.dumps(ROW)
OTHER = json.dumps(dict(ROW, prompt="How do I fry an egg?"))  # not a duplicate of any case


def _lake(tmp_path) -> Lake:
    return Lake.open(str(tmp_path / "lake"))


def _bad(**fields) -> str:
    """ROW with fields replaced by JSON texts, e.g. chosen='{"x": 1}'; None drops a field."""
    body = {k: json.dumps(v) for k, v in ROW.items()}
    body.update({k: v for k, v in fields.items()})
    return "{" + ", ".join(f'"{k}": {v}' for k, v in body.items() if v is not None) + "}"


def _quarantined(lake: Lake) -> dict:
    (q,) = lake.rows("quarantine")
    return q


ROW_CASES = {
    # blank is missing, for every field
    "blank chosen": (_bad(chosen='""'), "missing_chosen", None),
    "whitespace chosen": (_bad(chosen='" \\t\\u3000"'), "missing_chosen", None),
    "blank strength": (_bad(strength='"  "'), "missing_strength", None),
    "blank criterion": (_bad(criterion='""'), "missing_criterion", None),
    "blank safety label": (_bad(criterion='"safety"', safety_label='"\\n"'),
                           "missing_safety_label", None),
    "blank annotator": (_bad(annotator='"\\u00a0"'), "missing_annotator", None),
    "blank prompt id": (_bad(prompt=None, prompt_id='"  "'), "missing_prompt", None),
    "blank split": (_bad(split='" "'), None, None),  # optional: blank is absent
    # values that are not text where text belongs
    "object as chosen": (_bad(chosen='{"x": 1}'), "invalid_type", "chosen"),
    "list as chosen": (_bad(chosen='["a"]'), "invalid_type", "chosen"),
    "NaN as strength": (_bad(strength="NaN"), "invalid_type", "strength"),
    "Infinity as criterion": (_bad(criterion="-Infinity"), "invalid_type", "criterion"),
    "boolean as annotator": (_bad(annotator="true"), "invalid_type", "annotator"),
    "number as response": (_bad(response_b="2"), "invalid_type", "response_b"),
    "object as prompt": (_bad(prompt='{"role": "user", "content": "Hi"}'), "invalid_type",
                         "prompt"),
    "fraction as prompt id": (_bad(prompt=None, prompt_id="1.5"), "invalid_type", "prompt_id"),
    "NaN as prompt id": (_bad(prompt=None, prompt_id="NaN"), "invalid_type", "prompt_id"),
    # a whole number is an id's text: looked up like any id
    "number as prompt id": (_bad(prompt=None, prompt_id="7"), "unknown_prompt_id", None),
    "message list as prompt": (_bad(prompt='[{"role": "user", "content": "Hi?"}]'), None, None),
    "bad message list": (_bad(prompt='[{"role": "robot", "content": "Hi?"}]'),
                         "invalid_prompt", None),
    # a key twice: which one was meant cannot be told
    "key twice": (_bad(chosen='"a", "chosen": "b"'), "duplicate_key", "chosen"),
    "nested key twice": (_bad(prompt='[{"role": "user", "role": "user", "content": "x"}]'),
                         "duplicate_key", "role"),
    # text that is not Unicode
    "lone surrogate": (_bad(response_a='"x \\ud800"'), "invalid_encoding", "response_a"),
    "nested too deep": (_bad(response_a="[" * 100_000 + "]" * 100_000), "malformed_row", None),
    "open brackets": ('{"prompt": ' + "[" * 100_000, "malformed_row", None),
}


@pytest.mark.parametrize("line,reason,column", ROW_CASES.values(), ids=ROW_CASES)
def test_a_row_that_cannot_be_used_gets_its_reason(tmp_path, line, reason, column):
    lake = _lake(tmp_path)
    r = ingest_bytes(lake, f"{OTHER}\n{line}\n".encode(), "b.jsonl", cfg=CFG)
    assert r.delivered == 2 and r.accepted + r.rejected == 2
    if reason is None:
        assert (r.accepted, r.reasons) == (2, {})
        return
    assert (r.accepted, r.reasons) == (1, {reason: 1})
    q = _quarantined(lake)
    assert (q["row_index"], q["reason"]) == (1, reason)
    if column is not None:  # the quarantined row names the column
        assert json.loads(q["row"])["reject_reason"] == f"{reason}: {column}"


def test_a_line_not_utf8_is_its_own_row_the_rest_is_read(tmp_path):
    lake = _lake(tmp_path)
    bad = json.dumps(dict(ROW, response_a="café"), ensure_ascii=False).encode("latin-1")
    r = ingest_bytes(lake, GOOD.encode() + b"\n" + bad + b"\n", "latin.jsonl", cfg=CFG)
    assert (r.accepted, r.reasons) == (1, {"invalid_encoding": 1})
    assert json.loads(_quarantined(lake)["row"])["response_a"] == "caf\ufffd"


def test_a_csv_record_not_utf8_is_its_own_row(tmp_path):
    lake = _lake(tmp_path)
    data = _csv([ROW, dict(ROW, response_b="Oeufs.")]).replace(b"Oeufs", b"\x8cufs")
    r = ingest_bytes(lake, data, "b.csv", cfg=CFG)
    assert (r.accepted, r.reasons) == (1, {"invalid_encoding": 1})
    assert json.loads(_quarantined(lake)["row"])["reject_reason"] == "invalid_encoding: response_b"


def test_parquet_values_of_the_wrong_type(tmp_path):
    lake = _lake(tmp_path)
    t = pa.table({**{k: [v] * 4 for k, v in ROW.items() if k not in ("chosen", "annotator")},
                  "chosen": pa.array([None, None, 1, None], pa.int64()),
                  "annotator": pa.array([b"ann", b"\xff", b"ann", b"ann"], pa.binary()),
                  "prompt_id": pa.array([None] * 4, pa.int64())})
    r = ingest_bytes(lake, _parquet(t), "b.parquet", cfg=CFG)
    assert r.reasons == {"missing_chosen": 2, "invalid_type": 1, "invalid_encoding": 1}
    by_row = {q["row_index"]: json.loads(q["row"])["reject_reason"]
              for q in lake.rows("quarantine")}
    assert by_row == {0: None, 1: "invalid_encoding: annotator", 2: "invalid_type: chosen",
                      3: None}


def _csv(rows: list[dict], header: list[str] | None = None) -> bytes:
    out = io.StringIO()
    header = header or list(rows[0])
    w = csv.writer(out)
    w.writerow(header)
    for row in rows:
        w.writerow([row.get(h, "") for h in header])
    return out.getvalue().encode()


def _parquet(t: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(t, buf)
    return buf.getvalue()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("rows.csv", _csv([ROW]))
    return buf.getvalue()


JSONL = f"{GOOD}\n{OTHER}\n".encode()
FILE_CASES = {
    "all lines in another encoding": ("b.jsonl", JSONL.replace(b"Eggs", b"\xc9ggs"), "UTF-8"),
    "UTF-16": ("b.csv", _csv([ROW]).decode().encode("utf-16"), "re-export it as UTF-8"),
    "CSV header not UTF-8": ("b.csv", _csv([ROW]).replace(b"chosen", b"ch\xf6sen"), "UTF-8"),
    "column named twice": ("b.csv", _csv([ROW], list(ROW) + ["chosen"]), "'chosen' twice"),
    "one JSON array": ("b.json", json.dumps([ROW, ROW]).encode(), "one object per line"),
    "JSON array over lines": ("b.jsonl", json.dumps([ROW], indent=2).encode(),
                              "one object per line"),
    "one JSON document": ("b.jsonl", json.dumps(ROW, indent=2).encode(), "on one line"),
    "JSONL named .csv": ("week.csv", JSONL, "rename it to week.jsonl"),
    "CSV named .jsonl": ("week.jsonl", _csv([ROW]), "rename it to week.csv"),
    "JSONL named .parquet": ("week.parquet", JSONL, "rename it to week.jsonl"),
    "Parquet named .jsonl": ("week.jsonl", _parquet(pa.Table.from_pylist([ROW])),
                             "rename it to week.parquet"),
    "garbage named .parquet": ("week.parquet", b"\x00\x01garbage" * 10, "not a Parquet file"),
    "damaged Parquet": ("week.parquet", _parquet(pa.Table.from_pylist([ROW]))[:-20],
                        "damaged Parquet file"),
    "gzip without .gz": ("week.jsonl", gzip.compress(JSONL), "rename it to week.jsonl.gz"),
    ".gz that is not gzip": ("week.jsonl.gz", JSONL, "remove the .gz"),
    "damaged gzip": ("week.jsonl.gz", gzip.compress(JSONL)[:-12], "damaged gzip"),
    "CSV named .csv.gz, JSONL inside": ("w.csv.gz", gzip.compress(JSONL), "w.jsonl.gz"),
    "a zip archive": ("week.csv", _zip(), "unzip it"),
    "no chosen key": ("b.jsonl", (_bad(chosen=None) + "\n").encode(), "no row has the key chosen"),
    "no annotator column": ("b.csv", _csv([{k: v for k, v in ROW.items() if k != "annotator"}]),
                            "no column annotator"),
    "no responses": ("b.parquet", _parquet(pa.Table.from_pylist(
        [{k: v for k, v in ROW.items() if not k.startswith("response")}])),
                     "response_a or sample_id_a"),
    "a column misnamed": ("b.csv", _csv([ROW], [h if h != "chosen" else "Chosen "
                                                for h in ROW]), "rename 'Chosen ' to 'chosen'"),
}


@pytest.mark.parametrize("name,data,fix", FILE_CASES.values(), ids=FILE_CASES)
def test_a_file_that_cannot_be_read_is_refused_before_anything_is_written(tmp_path, name, data,
                                                                         fix):
    lake = _lake(tmp_path)
    with pytest.raises(DataError) as err:
        ingest_bytes(lake, data, name, cfg=CFG)
    assert fix in str(err.value) and name in str(err.value)
    assert lake.read("batches").num_rows == 0
    assert lake.read("quarantine").num_rows == lake.read("comparisons").num_rows == 0
    assert not lake.exists("raw")
    # refused, nothing recorded: the corrected file is then ingested
    assert ingest_bytes(lake, JSONL, "fixed.jsonl", cfg=CFG).accepted == 2


@pytest.mark.parametrize("name,data", [("e.jsonl", b""), ("e.jsonl", b"\n \r\n"), ("e.csv", b""),
                                       ("e.csv", _csv([ROW]).split(b"\n")[0] + b"\n"),
                                       ("e.jsonl.gz", gzip.compress(b""))])
def test_an_empty_delivery_is_a_batch_of_none(tmp_path, name, data):
    r = ingest_bytes(_lake(tmp_path), data, name, cfg=CFG)
    assert (r.delivered, r.accepted, r.rejected) == (0, 0, 0)


def test_a_first_row_that_is_an_array_is_a_malformed_row_not_a_json_file(tmp_path):
    r = ingest_bytes(_lake(tmp_path), f"[1, 2]\n{GOOD}\n".encode(), "b.jsonl", cfg=CFG)
    assert (r.accepted, r.reasons) == (1, {"malformed_row": 1})


def test_a_column_every_row_lacks_is_missing_but_a_null_one_is_per_row(tmp_path):
    lake = _lake(tmp_path)
    r = ingest_bytes(lake, (_bad(annotator="null") + "\n").encode(), "b.jsonl", cfg=CFG)
    assert r.reasons == {"missing_annotator": 1}
    # every row malformed: no column can be judged, each row is quarantined as delivered
    r = ingest_bytes(lake, b"{nope\n{\"chosen\": \n", "c.jsonl", cfg=CFG)
    assert r.reasons == {"malformed_row": 2}
