"""The catalog's views give one row per id, however the parts overlap: a part never repeats an
id, but two writers racing (each checks the ids already in the lake before the other's manifest
lands) can both write the same row."""

import json

import pytest

import flywheel.lake.catalog
from flywheel.lake.catalog import connect
from flywheel.lake.schemas import SCHEMAS
from flywheel.lake.store import Lake


def _prompt(i, source="t"):
    return {"id": f"p{i}", "messages": json.dumps([{"role": "user", "content": f"q{i}"}]),
            "source": source, "criterion": "helpfulness", "split": "train"}


def _racer(path) -> Lake:
    """A writer that checked the lake before anyone else's manifest landed: sees no ids."""
    racer = Lake.open(path)
    racer.read = lambda table, columns=None: SCHEMAS[table].empty_table()
    return racer


def _rows(lake):
    cur = connect(lake).execute("SELECT id, source FROM prompts ORDER BY id, source")
    return cur.fetchall()


def _view_text(lake) -> str:
    return connect(lake).execute(
        "SELECT sql FROM duckdb_views() WHERE view_name = '_prompts_parts'").fetchone()[0]


@pytest.fixture(params=["small", "large"])
def size(request, monkeypatch):
    """Run as a small table (DISTINCT ON) and as a large one (ids seen twice read apart)."""
    if request.param == "large":
        monkeypatch.setattr(flywheel.lake.catalog, "SMALL_TABLE_ROWS", 0)
    return request.param


def test_one_part_is_read_as_it_is(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    lake.write("prompts", [_prompt(1), _prompt(2), _prompt(2)])
    assert _rows(lake) == [("p1", "t"), ("p2", "t")]
    assert "DISTINCT" not in _view_text(lake).upper()


def test_rows_written_twice_by_racing_writers_appear_once(tmp_path, size):
    """Parts: A = p1 p2 p3 (source a), B = p2 p3 p4 (b), C = p3 p5 (c). p2 is in two parts, p3 in
    three: 5 ids, each once; p1, p4 and p5 as written; p2 and p3 from one of their parts."""
    path = str(tmp_path / "lake")
    lake = Lake.open(path)
    lake.write("prompts", [_prompt(i, "a") for i in (1, 2, 3)])
    _racer(path).write("prompts", [_prompt(i, "b") for i in (2, 3, 4)])
    _racer(path).write("prompts", [_prompt(i, "c") for i in (3, 5)])
    assert len(lake.files("prompts")) == 3
    rows = _rows(lake)
    assert [r[0] for r in rows] == ["p1", "p2", "p3", "p4", "p5"]
    got = dict(rows)
    assert (got["p1"], got["p4"], got["p5"]) == ("a", "b", "c")
    assert got["p2"] in ("a", "b") and got["p3"] in ("a", "b", "c")
    con = connect(lake)
    assert con.execute("SELECT count(*), count(DISTINCT id) FROM prompts").fetchone() == (5, 5)
    # every column comes through, in the schema's order
    cols = [d[0] for d in con.execute("SELECT * FROM prompts LIMIT 0").description]
    assert cols == SCHEMAS["prompts"].names
    assert sorted(lake.ids("prompts")) == [r[0] for r in rows]
    assert "DISTINCT ON" in _view_text(lake).upper()


def test_parts_without_overlap(tmp_path, size):
    """Only a large table reads the ids apart first (the anti join on the ids seen twice)."""
    lake = Lake.open(str(tmp_path / "lake"))
    for i in range(3):
        lake.write("prompts", [_prompt(2 * i), _prompt(2 * i + 1)])
    assert [r[0] for r in _rows(lake)] == [f"p{i}" for i in range(6)]
    assert ("ANTI JOIN" in _view_text(lake).upper()) == (size == "large")


def test_columns_added_after_a_part_was_written_read_as_null(tmp_path):
    """A lake written before `reward_models` had `promoted` and `decision`: the views and the
    status report still answer, with NULL for the missing columns."""
    import pyarrow.parquet as pq

    from flywheel.lake.catalog import connect, status
    from flywheel.lake.store import Lake

    lake = Lake.open(str(tmp_path / "lake"))
    lake.write("reward_models", [{"id": "r1", "iteration": 1, "criterion": "combined",
                                  "uri": "x", "backbone": "b", "parents": "[]",
                                  "data_mix": "{}", "metrics": "{}"}])
    (part,) = lake.files("reward_models")
    pq.write_table(pq.read_table(part).drop_columns(["promoted", "decision"]), part)
    con = connect(lake)
    assert con.sql("SELECT id, promoted, decision FROM reward_models").fetchall() == [
        ("r1", None, None)]
    con.close()
    (row,) = status(lake)["reward_models"]
    assert (row["id"], row["promoted"], row["decision"]) == ("r1", None, None)
