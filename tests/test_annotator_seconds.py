"""Annotator speed: the optional `seconds` delivery column kept in `comparisons` (not part of a
row's identity) and read by the annotator report's median seconds per item; a value that is not
a number of seconds >= 0 refused with `invalid_seconds`; Label Studio's `lead_time` and the review
page's timer as its sources."""

from __future__ import annotations

import io
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from annotation_lake import build_lake
from fastapi.testclient import TestClient

from flywheel.annotation import gold
from flywheel.annotation.annotators import report
from flywheel.annotation.exchange import from_label_studio
from flywheel.annotation.ingest import ingest_bytes
from flywheel.annotation.pairs import week_pairs, write_delivery_jsonl
from flywheel.annotation.reasons import help_for
from flywheel.annotation.review import create_app
from flywheel.lake.catalog import connect
from flywheel.lake.store import Lake
from flywheel.stages.report_annotators import table_markdown

GOLD = {"gold_id": gold.gold_key("gold good", "gold bad"),
        "messages": [{"role": "user", "content": "gold prompt"}], "criterion": "helpfulness",
        "text_a": "gold good", "text_b": "gold bad", "answer": "a"}


def _row(i: int, who: str, **more) -> dict:
    return {"prompt": f"prompt {i}", "response_a": f"answer one {i} {who}",
            "response_b": f"answer two {i} {who}", "chosen": "a", "strength": "better",
            "criterion": "helpfulness", "annotator": who, **more}


def _by_annotator(lake: Lake) -> dict[str, dict]:
    with connect(lake) as con:
        return {r["annotator"]: r for r in report(con, lake)["annotators"]}


def test_a_delivery_with_seconds_lands_and_the_report_shows_the_median(tmp_path):
    """ana: 10, 60, 20 s and a gold label at "30": median of 10, 20, 30, 60 = 25; ben: "5",
    blank, 7: median of 5 and 7 = 6; cara gives no time: n/a."""
    lake = Lake.open(str(tmp_path / "lake"))
    gold.register(lake, [GOLD])
    rows = [_row(0, "ana", seconds=10), _row(1, "ana", seconds=60.0), _row(2, "ana", seconds=20),
            _row(0, "ben", seconds="5"), _row(1, "ben", seconds=" "), _row(2, "ben", seconds=7),
            _row(0, "cara"),
            {"prompt": json.dumps(GOLD["messages"]), "response_a": "gold good",
             "response_b": "gold bad", "chosen": "a", "strength": "better",
             "criterion": "helpfulness", "annotator": "ana", "seconds": "30"}]
    result = ingest_bytes(lake, write_delivery_jsonl(rows), "week-1.jsonl", "week-1")
    assert (result.accepted, result.reasons) == (7, {"gold_pair": 1})
    stored = {(c["annotator"], c["chosen_text"]): c["seconds"]
              for c in lake.rows("comparisons")}
    assert stored[("ana", "answer one 1 ana")] == 60.0
    assert stored[("ben", "answer one 1 ben")] is None and stored[("ben", "answer one 0 ben")] == 5
    got = _by_annotator(lake)
    assert [got[a]["median_seconds"] for a in ("ana", "ben", "cara")] == [25.0, 6.0, None]
    table = {line.split(" | ")[0].strip("| "): line for line in table_markdown(list(got.values()))}
    assert table["ana"].endswith("| 25.0 |") and table["cara"].endswith("| n/a |")

    # delivered again with other times: the rows already in the lake, their times kept
    again = [r | {"seconds": 99} for r in rows[:3]]
    result = ingest_bytes(lake, write_delivery_jsonl(again), "week-1-again.jsonl", "week-1")
    assert (result.accepted, result.new) == (3, 0)
    assert _by_annotator(lake)["ana"]["median_seconds"] == 25.0


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_seconds_land_from_every_format(tmp_path, fmt):
    """A CSV cell is text, a Parquet column and a JSON Lines file read whole are numbers."""
    lake = Lake.open(str(tmp_path / "lake"))
    rows = [_row(0, "ana", seconds=12.5), _row(1, "ana", seconds=3)]
    if fmt == "csv":
        cols = list(rows[0])
        data = ("\n".join([",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in rows])
                + "\n").encode()
    elif fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        data = buf.getvalue()
    else:
        data = write_delivery_jsonl(rows)
    result = ingest_bytes(lake, data, f"week.{fmt}", "week-1")
    assert result.accepted == 2, result.reasons
    assert sorted(c["seconds"] for c in lake.rows("comparisons")) == [3.0, 12.5]


def test_a_wrong_seconds_value_is_refused_with_its_reason(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    bad = [-1, "fast", "-0.5", math.nan, math.inf, "1e400"]
    rows = [_row(i, "ana", seconds=v) for i, v in enumerate(bad)]
    rows += [_row(10, "ana", seconds=True), _row(11, "ana", seconds=[3])]
    result = ingest_bytes(lake, write_delivery_jsonl(rows), "week.jsonl", "week-1")
    assert result.accepted == 0
    assert result.reasons == {"invalid_seconds": len(bad), "invalid_type": 2}
    reasons = {q["row_index"]: q["reason"] for q in lake.rows("quarantine")}
    assert [reasons[i] for i in range(len(rows))] == ["invalid_seconds"] * len(bad) + [
        "invalid_type"] * 2
    assert "seconds" in help_for("invalid_seconds")


def test_label_studio_s_lead_time_is_the_row_s_seconds():
    """lead_time (seconds from opening the task to submitting it) is carried; one that is not
    a number of seconds >= 0 is left out, the label kept."""
    data = {"prompt": "p", "response_a": "x", "response_b": "y", "prompt_id": "p1",
            "sample_id_a": "s1", "sample_id_b": "s2", "criterion": "helpfulness"}
    result = [{"from_name": "chosen", "to_name": "response_a", "type": "pairwise",
               "value": {"selected": "left"}},
              {"from_name": "strength", "type": "choices",
               "value": {"choices": ["better"]}}]
    times = [12.345, 3, None, -1.0, True, "9"]
    export = [{"id": 1, "data": data, "annotations": [
        {"id": n, "result": result, "completed_by": n, "lead_time": t}
        for n, t in enumerate(times)]}]
    rows = from_label_studio(export)
    assert [r.get("seconds") for r in rows] == [12.345, 3, None, None, None, None]
    assert all(r["chosen"] == "a" for r in rows)


@pytest.fixture
def lake(tmp_path):
    return build_lake(tmp_path / "lake")


def test_the_review_page_s_seconds_reach_the_lake(lake):
    pairs = week_pairs(lake, 1)
    c = TestClient(create_app(lake, 1, "tok"))
    assert c.get("/?token=tok").status_code == 200
    page = {"X-Flywheel-Review": "1"}
    for n, p in enumerate(pairs):
        label = {"pair_id": p["pair_id"], "chosen": "a", "strength": "better",
                 "safety_label": "both_safe" if p["criterion"] == "safety" else None,
                 "annotator": "ana", **({"seconds": 4.5 * (n + 1)} if n < 2 else {})}
        assert c.post("/api/submit", json=label, headers=page).status_code == 200
    assert c.get("/api/state").json()["closed"]
    assert sorted(c["seconds"] for c in lake.rows("comparisons")
                  if c["seconds"] is not None) == [4.5, 9.0]
    assert _by_annotator(lake)["ana"]["median_seconds"] == pytest.approx(6.75)


@pytest.mark.parametrize("value", ["12", True, [1], {"s": 1}, -0.5])
def test_the_review_page_refuses_wrong_seconds_with_a_422(lake, value):
    pair = week_pairs(lake, 1)[0]
    c = TestClient(create_app(lake, 1, "tok"))
    assert c.get("/?token=tok").status_code == 200
    label = {"pair_id": pair["pair_id"], "chosen": "a", "strength": "better",
             "safety_label": "both_safe" if pair["criterion"] == "safety" else None,
             "annotator": "ana", "seconds": value}
    res = c.post("/api/submit", json=label, headers={"X-Flywheel-Review": "1"})
    assert res.status_code == 422
    assert res.json() == {"error": "seconds must be a number of seconds of at least 0 (or left "
                                   "out)"}
    assert c.get("/api/state").json()["labelled"] == 0


def test_rows_written_before_the_column_read_as_no_time(tmp_path, monkeypatch):
    """A lake whose comparisons table was written before `seconds` existed: NULL seconds, speed
    n/a; a new delivery adds the column (the Delta table's schema merged) with its times."""
    from flywheel.lake.schemas import SCHEMAS

    lake = Lake.open(str(tmp_path / "lake"))
    now = SCHEMAS["comparisons"]
    with monkeypatch.context() as m:
        m.setitem(SCHEMAS, "comparisons", now.remove(now.get_field_index("seconds")))
        ingest_bytes(lake, write_delivery_jsonl([_row(0, "ana"), _row(1, "ana")]), "old.jsonl",
                     "week-1")
    (old,), _ = lake.files("comparisons", None)
    assert "seconds" not in pq.read_schema(old).names
    with connect(lake) as con:
        assert con.execute("SELECT count(*), count(seconds) FROM comparisons").fetchall() == [
            (2, 0)]
    assert _by_annotator(lake)["ana"]["median_seconds"] is None
    ingest_bytes(lake, write_delivery_jsonl([_row(2, "ana", seconds=8)]), "new.jsonl", "week-2")
    assert sorted(map(str, (c["seconds"] for c in lake.rows("comparisons")))) == [
        "8.0", "None", "None"]
    assert _by_annotator(lake)["ana"]["median_seconds"] == 8.0
