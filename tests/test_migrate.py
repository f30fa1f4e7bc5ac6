"""`flywheel lake migrate`: a lake of the earlier format (Parquet parts and manifests) becomes
Delta Lake tables in place, with its rows, lineage and visibility rules, resumably."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from flywheel.errors import LakeError
from flywheel.flows.cli import main
from flywheel.lake import legacy
from flywheel.lake.catalog import connect
from flywheel.lake.lineage import lineage
from flywheel.lake.migrate import migrate
from flywheel.lake.schemas import SCHEMAS
from flywheel.lake.store import Lake


def _old_lake(path) -> Lake:
    """What the earlier format held after a week: two deliveries (the second cut short before
    its batches row), a policy with its checkpoint, stored with absolute locations."""
    lake = Lake(str(path))
    lake.fs.makedirs(lake.root, exist_ok=True)

    def put(table, rows, lineage=None):
        data = pa.Table.from_pylist([{k: r.get(k) for k in SCHEMAS[table].names} for r in rows],
                                    schema=SCHEMAS[table])
        legacy.write_table(lake, table, data, lineage)

    def comparison(i, delivery):
        return {"id": f"c{delivery}{i}", "prompt_id": "p1", "chosen_text": f"good {i}",
                "rejected_text": f"bad {i}", "strength": "better", "criterion": "helpfulness",
                "annotator": "a", "batch_id": f"week-{delivery}", "delivery_id": f"d{delivery}",
                "source": "in-house", "split": "train"}

    put("prompts", [{"id": "p1", "messages": "[]", "source": "t", "criterion": "helpfulness",
                     "split": "train"}])
    put("comparisons", [comparison(i, 1) for i in range(3)], {"batch": "week-1"})
    put("comparisons", [comparison(1, 1), comparison(3, 1)], {"batch": "week-1"})  # overlap
    put("batches", [{"id": "d1", "batch_id": "week-1", "status": "complete", "accepted": 4,
                     "raw_uri": f"{lake.uri}/raw/abc/week-1.jsonl", "checksum": "abc",
                     "filename": "week-1.jsonl", "delivered": 4, "rejected": 0, "new": 4,
                     "heldout": 0}])
    put("comparisons", [comparison(i, 2) for i in range(2)], {"batch": "week-2"})  # cut short
    put("policies", [{"id": "base", "iteration": 0, "uri": "builtin:x", "method": "base"},
                     {"id": "pol1", "iteration": 1, "method": "rejection_sampling",
                      "parent_id": "base", "uri": f"{lake.uri}/artifacts/policies/pol1"}],
        {"stage": "rejection_sampling"})
    return lake


def test_an_old_lake_is_refused_with_the_command_then_migrated(tmp_path, capsys):
    old = _old_lake(tmp_path / "lake")
    with pytest.raises(LakeError, match="flywheel lake migrate --lake"):
        Lake.open(old.uri)
    assert main(["lake", "migrate", "--lake", old.uri]) == 0
    assert "comparisons: 3 parts -> 6 rows" in capsys.readouterr().out
    lake = Lake.open(old.uri, read_only=True)
    assert sorted(lake.ids("comparisons")) == ["c10", "c11", "c12", "c13", "c20", "c21"]
    con = connect(lake)
    # the delivery cut short before its batches row stays invisible
    assert con.execute("SELECT delivery_id, count(*) FROM comparisons GROUP BY 1"
                       ).fetchall() == [("d1", 4)]
    # locations under the lake's root became relative; others are kept as they were
    uris = dict(con.execute("SELECT id, uri FROM policies").fetchall())
    assert uris == {"base": "builtin:x", "pol1": "artifacts/policies/pol1"}
    assert [b["raw_uri"] for b in lake.rows("batches")] == ["raw/abc/week-1.jsonl"]
    # each part is one commit carrying its lineage
    commits = [c for c in lake.history("comparisons") if c.get("lineage")]
    assert sorted(c["lineage"]["batch"] for c in commits) == ["week-1", "week-1", "week-2"]
    assert lineage(lake, "pol1")["ancestry"][0]["parent_id"] == "base"
    # the earlier files are kept, and a second run is a no-op
    assert old.exists("manifests/comparisons") and migrate(old.uri, lambda _: None) == {}


def test_an_interrupted_migration_is_run_again(tmp_path):
    old = _old_lake(tmp_path / "lake")
    seen = []

    def stop_after_comparisons(line):
        seen.append(line)
        if line.startswith("comparisons"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        migrate(old.uri, stop_after_comparisons)
    with pytest.raises(LakeError, match="earlier format"):  # not whole yet: still refused
        Lake.open(old.uri)
    done = migrate(old.uri, lambda _: None)
    assert done["comparisons"] == {"parts": 3, "rows": 0}  # converted the first time
    assert done["policies"] == {"parts": 1, "rows": 2}
    lake = Lake.open(old.uri)
    assert json.loads(lake.read_bytes("lake.json"))["format"] == "delta"
    assert len(lake.rows("comparisons")) == 6 and len(lake.rows("policies")) == 2


def test_migrating_what_is_not_an_old_lake_says_so(tmp_path):
    with pytest.raises(LakeError, match="no lake of the earlier format"):
        migrate(str(tmp_path / "nothing"))
    Lake.open(str(tmp_path / "new"))
    assert migrate(str(tmp_path / "new"), lambda _: None) == {}
