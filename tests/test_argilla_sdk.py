"""The Argilla round trip with the Argilla SDK's own classes (no server): the records
`to_argilla` writes load as `rg.Record`s, and an export built from `rg.Record`s with
`rg.Response`s, in the shape `dataset.records.to_json` writes (the SDK's `Record.to_dict`), comes
back as delivery rows and through ingest."""

from __future__ import annotations

import json
import uuid

import pytest
from annotation_lake import build_lake

from flywheel.annotation.exchange import from_argilla, import_export, to_argilla
from flywheel.annotation.pairs import week_pairs

rg = pytest.importorskip("argilla", reason="argilla is in the dev extra (make setup)")
ANA, BEN = uuid.UUID(int=1), uuid.UUID(int=2)


@pytest.fixture
def lake(tmp_path):
    return build_lake(tmp_path / "lake")


def test_our_records_load_as_sdk_records(lake):
    ours = to_argilla(week_pairs(lake, 1))
    records = [rg.Record.from_dict(r) for r in ours]
    assert [r.id for r in records] == [r["id"] for r in ours]
    for mine, theirs in zip(ours, records):
        back = theirs.to_dict()
        assert (back["id"], back["fields"], back["metadata"]) == (
            mine["id"], mine["fields"], mine["metadata"])


def _labelled(record: dict, *answers: tuple[uuid.UUID, str, str, str | None]) -> dict:
    """The record with each (user, preferred, strength, safety label) as rg.Response objects,
    exported as `to_json` writes it; the server marks a record with responses completed."""
    responses = [rg.Response(q, v, user_id=user, status="submitted")
                 for user, *values in answers
                 for q, v in zip(("preferred", "strength", "safety_label"), values) if v]
    out = rg.Record.from_dict(record)
    out = rg.Record(id=out.id, fields=dict(out.fields), metadata=dict(out.metadata),
                    responses=responses).to_dict()
    return {**out, "status": "completed" if answers else "pending"}


def test_an_export_of_sdk_records_lands_through_ingest(lake):
    pairs = {p["prompt_id"]: p for p in week_pairs(lake, 1)}
    recs = {r["metadata"]["prompt_id"]: r for r in to_argilla(list(pairs.values()))}
    export = [_labelled(recs["p-rice"], (ANA, "a", "better", None), (BEN, "b", "slightly better",
                                                                      None)),
              _labelled(recs["p-lock"], (ANA, "a", "significantly_better",
                                         "chosen_safe_other_unsafe")),
              _labelled(recs["p-lisbon"])]  # nobody labelled it: pending, skipped
    assert all("status" not in r for rec in export for rs in rec["responses"].values()
               for r in rs)  # SDK 2.8 writes no per-response status
    rows = from_argilla(json.loads(json.dumps(export)))
    assert [(r["prompt_id"], r["chosen"], r["strength"], r["annotator"]) for r in rows] == [
        ("p-rice", "a", "better", str(ANA)), ("p-rice", "b", "slightly better", str(BEN)),
        ("p-lock", "a", "significantly_better", str(ANA))]
    result = import_export(lake, json.dumps(export).encode(), "argilla", "records.json",
                           iteration=1)
    assert (result.delivered, result.accepted, result.rejected) == (3, 3, 0)
    chosen = {(r["annotator"], r["chosen_sample_id"]) for r in lake.rows("comparisons")}
    assert chosen == {(str(ANA), pairs["p-rice"]["sample_id_a"]),
                      (str(BEN), pairs["p-rice"]["sample_id_b"]),
                      (str(ANA), pairs["p-lock"]["sample_id_a"])}
