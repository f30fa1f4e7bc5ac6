"""Properties of ingest over generated deliveries (JSONL and CSV), valid rows mixed with rows of
junk (blanks, values of the wrong type, unicode with surrogates, control characters and NULs,
keys given twice, odd whitespace): ingest raises nothing but DataError; every delivered row ends
up in exactly one place; every accepted row reads back from the lake as it was delivered,
normalised."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel.annotation.ingest import ingest_bytes
from flywheel.config import AnnotationConfig
from flywheel.errors import DataError
from flywheel.lake.store import Lake

CFG = AnnotationConfig(heldout_fraction=0.0, max_text_chars=200)
# FLYWHEEL_PROPERTY_EXAMPLES raises the count for a thorough run (e.g. 1000)
SETTINGS = settings(max_examples=int(os.environ.get("FLYWHEEL_PROPERTY_EXAMPLES", "40")),
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
WS = st.sampled_from(["", " ", "\t", "\u00a0", "\u3000", "\n", " \r\n "])
LABELS = {"chosen": ["a", "b", "A", " b "],
          "strength": ["better", "Significantly better", "slightly-better", "unsure",
                       "negligibly better / unsure"],
          "criterion": ["helpfulness", "Safety "]}
SAFETY = ["both safe", "chosen safe other unsafe", "Both_Unsafe"]
# any text, control characters, NUL and lone surrogates included
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
JUNK = st.one_of(
    st.just(""), WS, TEXT, st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
FIELDS = ("prompt", "response_a", "response_b", "chosen", "strength", "criterion",
          "safety_label", "annotator", "split")


@st.composite
def good_rows(draw) -> dict:
    """A valid in-house row, with its labels spelled any accepted way, padded with spaces."""
    pad = draw(WS)
    text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                   max_size=40).filter(lambda t: t.strip())
    row = {"prompt": draw(text), "response_a": draw(text), "response_b": draw(text),
           "annotator": pad + draw(text) + pad}
    row.update({k: pad + draw(st.sampled_from(v)) + pad for k, v in LABELS.items()})
    if row["criterion"].strip().lower() == "safety":
        row["safety_label"] = draw(st.sampled_from(SAFETY))
    return row


@st.composite
def junk_rows(draw) -> dict | str:
    """A row with one to three fields replaced by junk, or a line that is not a row at all."""
    kind = draw(st.sampled_from(["fields", "fields", "duplicate", "line"]))
    if kind == "line":
        return draw(st.one_of(TEXT, st.just("[1, 2]"), st.just('{"chosen": '),
                              st.just("{" * 3000), st.just("[" * 3000)))
    row = draw(good_rows())
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3)):
        row[name] = draw(JUNK)
    if kind == "duplicate":
        body = json.dumps(row)[:-1]
        return body + (", " if row else "") + f'"chosen": {json.dumps(draw(JUNK))}}}'
    return row


ROWS = st.lists(st.one_of(good_rows(), junk_rows()), min_size=1, max_size=12)


def _jsonl(rows, ascii_only: bool) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=ascii_only)) + "\n"
                   for r in rows).encode("utf-8", "surrogatepass")


def _cell(value) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value)


def _csv(rows) -> bytes:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(FIELDS)
    for r in rows:
        w.writerow([r] if isinstance(r, str) else [_cell(r.get(k)) for k in FIELDS])
    return out.getvalue().encode("utf-8", "surrogatepass")


def _as_text(row, fmt: str) -> dict | None:
    """The row as its columns of text (None: missing), as the delivery gives them; None when
    some value is not text (or a lone surrogate), or the row is not an object."""
    if not isinstance(row, dict):
        return None
    out = {}
    for k in FIELDS:
        v = row.get(k)
        if fmt == "csv":
            v = _cell(v) or None
        elif type(v) is int and k == "annotator":  # a number is an id's text
            v = str(v)
        if not (v is None or isinstance(v, str)) or any(0xD800 <= ord(c) <= 0xDFFF
                                                         for c in v or ""):
            return None
        out[k] = v
    return out


def _label(value: str) -> str:
    key = "_".join(value.strip().lower().replace("-", " ").replace("/", " ").split())
    return {"unsure": "negligibly_better",
            "negligibly_better_or_unsure": "negligibly_better",
            "negligibly_better_unsure": "negligibly_better"}.get(key, key)


def _check(data: bytes, name: str, rows: list) -> None:
    fmt = "csv" if name.endswith(".csv") else "jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake.open(tmp)
        try:
            r = ingest_bytes(lake, data, name, cfg=CFG)
        except DataError:  # refused whole: nothing written
            assert lake.read("batches").num_rows == 0
            return
        assert r.accepted + r.rejected == r.delivered
        assert lake.read("quarantine").num_rows == r.rejected
        assert lake.read("comparisons").num_rows == r.new <= r.accepted
        texts = [t for t in (_as_text(row, fmt) for row in rows) if t is not None]
        got = {(c["chosen_text"], c["rejected_text"], c["strength"], c["criterion"],
                c["safety_label"], c["annotator"]) for c in lake.rows("comparisons")}
        assert {_normalised(t) for t in texts if _ok(t)} <= got  # every valid row accepted
        assert got <= {_normalised(t) for t in texts if _complete(t)}  # each as delivered


def _complete(row: dict) -> bool:
    return all(row[k] is not None for k in ("response_a", "response_b", "chosen", "strength",
                                            "criterion", "annotator"))


def _ok(row: dict) -> bool:
    """Whether the row is valid (its texts present and distinct, its labels known)."""
    texts = [row["prompt"], row["response_a"], row["response_b"], row["annotator"]]
    return (_complete(row) and all(t is not None and t.strip() for t in texts)
            and row["response_a"].strip() != row["response_b"].strip()
            and not row["prompt"].strip().startswith("[")
            and _label(row["chosen"]) in ("a", "b")
            and _label(row["strength"]) in ("better", "significantly_better", "slightly_better",
                                            "negligibly_better")
            and _label(row["criterion"]) in ("helpfulness", "safety")
            and _label(row["split"] or "") in ("train", "test", "")
            # a safety label, when given, must be one of the three kept, whatever the
            # criterion; a safety row needs one
            and _label(row["safety_label"] or "") in (
                "both_safe", "chosen_safe_other_unsafe", "both_unsafe",
                *(("",) if _label(row["criterion"]) != "safety" else ())))


def _normalised(row: dict) -> tuple:
    """(chosen text, rejected text, strength, criterion, safety label, annotator)."""
    a, b = row["response_a"], row["response_b"]
    chosen, rejected = (a, b) if _label(row["chosen"]) == "a" else (b, a)
    safety = _label(row["safety_label"]) if (row["safety_label"] or "").strip() else None
    return (chosen, rejected, _label(row["strength"]), _label(row["criterion"]), safety,
            row["annotator"].strip())


@SETTINGS
@given(ROWS, st.booleans())
def test_jsonl_deliveries(rows, ascii_only):
    _check(_jsonl(rows, ascii_only), "b.jsonl", rows)


@SETTINGS
@given(ROWS)
def test_csv_deliveries(rows):
    _check(_csv(rows), "b.csv", rows)
