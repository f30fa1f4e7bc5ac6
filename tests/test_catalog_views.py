"""The catalog's views: one snapshot of each table per connection, deliveries visible whole or
not at all, texts of sample-id comparisons read from `samples`, tables written before a
column existed still answering, and rows read by id."""

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from flywheel.lake.catalog import connect, query, rows_by_id, status, versions_of
from flywheel.lake.schemas import SCHEMAS
from flywheel.lake.store import Lake


def _comparison(i, delivery, **kw):
    return {"id": f"c{i}", "prompt_id": "p", "chosen_text": f"good {i}",
            "rejected_text": f"bad {i}", "strength": "better", "criterion": "helpfulness",
            "annotator": "a", "batch_id": "week-1", "delivery_id": delivery, "source": "in-house",
            "split": "train", **kw}


def test_a_connection_reads_one_snapshot_and_earlier_versions_on_request(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    first = lake.write("prompts", [{"id": "p1", "messages": "[]"}])
    con = connect(lake)
    lake.write("prompts", [{"id": "p2", "messages": "[]"}])
    # the connection keeps the version it was made at; a new one sees the write
    assert con.execute("SELECT count(*) FROM prompts").fetchall() == [(1,)]
    assert versions_of(con)["prompts"] == first.version
    assert connect(lake).execute("SELECT count(*) FROM prompts").fetchall() == [(2,)]
    old = connect(lake, {"prompts": first.version})
    assert old.execute("SELECT id FROM prompts").fetchall() == [("p1",)]


def test_comparisons_show_only_complete_deliveries(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    lake.write("comparisons", [_comparison(1, "d1"), _comparison(2, "d2"),
                               _comparison(3, "d3")])
    lake.write("batches", [{"id": "d1", "batch_id": "week-1", "status": "complete"},
                           {"id": "d3", "batch_id": "week-1", "status": "retracted"}])
    # d2 never got its batches row (cut short); d3 was retracted
    assert [r["id"] for r in query(lake, "SELECT id FROM comparisons")] == ["c1"]
    assert len(query(lake, "SELECT id FROM all_comparisons")) == 3


def test_a_side_given_by_sample_id_reads_its_text_from_samples(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    lake.write("samples", [{"id": "s1", "prompt_id": "p", "text": "from the sample"}])
    lake.write("comparisons", [_comparison(1, "d1", chosen_text=None, chosen_sample_id="s1")])
    lake.write("batches", [{"id": "d1", "batch_id": "week-1", "status": "complete"}])
    (row,) = query(lake, "SELECT chosen_text, rejected_text FROM comparison_texts")
    assert row == {"chosen_text": "from the sample", "rejected_text": "bad 1"}


def test_columns_added_after_a_table_was_written_read_as_null(tmp_path):
    """A lake written before `reward_models` had `promoted` and `decision`: the views and the
    status report still answer, with NULL for the missing columns."""
    lake = Lake.open(str(tmp_path / "lake"))
    older = pa.schema([f for f in SCHEMAS["reward_models"]
                       if f.name not in ("promoted", "decision")])
    write_deltalake(lake.table_uri("reward_models"), pa.Table.from_pylist(
        [{"id": "r1", "iteration": 1, "criterion": "combined", "uri": "x", "backbone": "b",
          "parents": "[]", "data_mix": "{}", "metrics": "{}"}], schema=older))
    con = connect(lake)
    assert con.sql("SELECT id, promoted, decision FROM reward_models").fetchall() == [
        ("r1", None, None)]
    con.close()
    (row,) = status(lake)["reward_models"]
    assert (row["id"], row["promoted"], row["decision"]) == ("r1", None, None)
    # and the next write adds the columns to the table
    lake.write("reward_models", [{"id": "r2", "iteration": 2, "promoted": True}])
    assert sorted(lake.read("reward_models", ["id", "promoted"]).to_pylist(),
                  key=lambda r: r["id"]) == [{"id": "r1", "promoted": None},
                                             {"id": "r2", "promoted": True}]


def test_rows_by_id_reads_the_named_rows_and_columns(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    lake.write("samples", [{"id": f"s{i}", "prompt_id": f"p{i}", "iteration": i,
                            "text": f"text {i}", "params": "{}"} for i in range(5)])
    con = connect(lake)
    whole = rows_by_id(con, "samples", ["s3", "s1", "s1", "absent"])
    assert sorted(whole) == ["s1", "s3"] and set(whole["s1"]) == set(SCHEMAS["samples"].names)
    # only the columns asked for (and the id), with the values the whole rows hold
    some = rows_by_id(con, "samples", ["s1", "s3"], ["text", "iteration"])
    assert some == {i: {"id": i, "text": whole[i]["text"], "iteration": whole[i]["iteration"]}
                    for i in ("s1", "s3")}
    assert rows_by_id(lake, "samples", [], ["text"]) == {}
    # the ids' table is gone afterwards: the connection takes the next lookup
    assert rows_by_id(con, "samples", ["s4"], ["id"]) == {"s4": {"id": "s4"}}
    with pytest.raises(ValueError, match="no columns"):
        rows_by_id(con, "samples", ["s1"], ["txet"])
