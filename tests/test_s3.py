"""The whole lake on S3, chosen by the URI alone: moto's S3 server over real HTTP (tests/s3.py),
reached through s3fs from the standard AWS environment variables; DuckDB reads the Parquet parts
through the registered s3fs filesystem."""

from __future__ import annotations

import json

import pytest
import s3fs
from mix_lake import build, jsonl, row
from s3 import moto_s3

from flywheel.annotation.ingest import ingest_bytes
from flywheel.errors import LakeError
from flywheel.lake.catalog import connect, status
from flywheel.lake.store import Lake
from flywheel.reward.mixes import helpfulness_mix, mix_record, safety_mix


@pytest.fixture(scope="module")
def s3_bucket():
    """A bucket on one moto S3 server for the module's tests."""
    with moto_s3() as (_, bucket):
        yield bucket


def fresh_client() -> s3fs.S3FileSystem:
    """An s3fs client that shares no cache with the lake's: what another process would see."""
    return s3fs.S3FileSystem(skip_instance_cache=True)


def test_the_uri_alone_selects_s3(s3_bucket):
    lake = Lake.open(f"s3://{s3_bucket}/plain")
    assert (lake.protocol, lake.local, lake.uri) == ("s3", False, f"s3://{s3_bucket}/plain")
    prompt = {"id": "p1", "messages": "[]", "source": "t", "criterion": "safety", "split": "train"}
    assert lake.write("prompts", [prompt]).written == 1
    assert lake.rows("prompts") == [prompt]
    [part], version = lake.files("prompts")  # version 0 created the table, empty
    assert version == 1 and part.startswith(f"s3://{s3_bucket}/plain/delta/prompts/")
    assert fresh_client().exists(part)


def test_parts_written_by_another_process_are_seen(s3_bucket):
    """s3fs caches listings per client; the lake must list again, or a worker never sees what
    another worker wrote after its first look."""
    uri = f"s3://{s3_bucket}/two-writers"
    reader = Lake.open(uri)
    # its own client, as in another process
    other = Lake.open(uri, storage_options={"skip_instance_cache": True})
    assert reader.fs is not other.fs
    for i in range(3):
        other.write("prompts", [{"id": f"p{i}", "messages": "[]", "source": "t",
                                 "criterion": "safety", "split": "train"}])
        assert len(reader.read("prompts")) == i + 1
    # a drop folder polled while another process drops files into it
    names = ["a.jsonl", "b.jsonl", "c.jsonl"]
    for i, name in enumerate(names):
        assert not reader.exists(f"incoming/{name}")
        other.write_bytes(f"incoming/{name}", b"{}\n")
        assert reader.exists(f"incoming/{name}")
        assert reader.listdir("incoming") == names[: i + 1]


MIXED = [
    # 6 good in-house rows without a split: round(0.2 * 6) = 1 of them is held out
    *[row(f"good {i}", "in-house", "helpfulness", None) for i in range(4)],
    *[row(f"good safety {i}", "in-house", "safety", None) for i in range(2)],
    row("good 0", "in-house", "helpfulness", None),  # duplicate_row (of row 0)
    {**row("bad strength", "in-house", "helpfulness", None), "strength": "much better"},
    {**row("same 1", "in-house", "helpfulness", None), "response_b": "a good answer same 1"},
    {**row("same 2", "in-house", "helpfulness", None), "response_b": "a good answer same 2"},
    {**row("no annotator", "in-house", "helpfulness", None), "annotator": " "},
    {**row("excluded", "in-house", "safety", None),
     "safety_label": "chosen unsafe other safe"},
]
for r in MIXED:
    r.pop("split")
MIXED_BYTES = jsonl(MIXED[:6]) + b'{"prompt": "a broken line", \n' + jsonl(MIXED[6:])
REASONS = {"duplicate_row": 1, "invalid_strength": 1, "identical_responses": 2,
           "missing_annotator": 1, "excluded_chosen_unsafe_other_safe": 1, "malformed_row": 1}


def test_ingest_on_s3_accounts_for_every_row_and_keeps_the_file(s3_bucket):
    """13 delivered: 6 accepted (1 held out), 7 rejected: 1 duplicate, 1 invalid strength,
    2 identical responses, 1 missing annotator, 1 excluded label, 1 malformed line."""
    lake = Lake.open(f"s3://{s3_bucket}/ingest")
    result = ingest_bytes(lake, MIXED_BYTES, "week-9.jsonl")
    assert (result.delivered, result.accepted, result.rejected) == (13, 6, 7)
    assert result.accepted + result.rejected == result.delivered
    assert (result.new, result.heldout) == (6, 1)
    assert result.reasons == REASONS

    # the rows, read back from S3 through DuckDB
    con = connect(lake)
    assert con.execute("SELECT split, count(*) FROM comparisons GROUP BY 1 ORDER BY 1"
                       ).fetchall() == [("test", 1), ("train", 5)]
    assert dict(con.execute("SELECT reason, count(*) FROM quarantine GROUP BY 1").fetchall()
                ) == REASONS
    [malformed] = con.execute("SELECT row_index, row FROM quarantine "
                              "WHERE reason = 'malformed_row'").fetchall()
    assert malformed == (6, json.dumps({"raw": '{"prompt": "a broken line", '}))

    # the delivered file, byte for byte, at the URI the batches row names
    assert result.raw_uri == f"s3://{s3_bucket}/ingest/raw/{result.checksum}/week-9.jsonl"
    with fresh_client().open(result.raw_uri, "rb") as f:
        assert f.read() == MIXED_BYTES
    [batch] = lake.rows("batches")
    # stored relative to the lake, so a copied lake keeps it
    assert (lake.url(batch["raw_uri"]), batch["delivered"], batch["status"]) == (result.raw_uri, 13,
                                                                      "complete")

    # the same bytes again: a no-op that writes nothing
    before = sorted(fresh_client().find(f"{s3_bucket}/ingest"))
    again = ingest_bytes(lake, MIXED_BYTES, "week-9.jsonl")
    assert again.already_ingested
    assert (again.accepted, again.rejected, again.reasons) == (6, 7, REASONS)
    assert sorted(fresh_client().find(f"{s3_bucket}/ingest")) == before


def test_queries_on_s3_match_a_local_lake(s3_bucket, tmp_path):
    s3_lake = build(Lake.open(f"s3://{s3_bucket}/mixes"))
    local = build(Lake.open(str(tmp_path / "lake")))
    s3_status, local_status = status(s3_lake), status(local)
    assert s3_status["counts"] == local_status["counts"]
    assert s3_status["counts"]["comparisons"] == 36 and s3_status["counts"]["batches"] == 4
    def same_anywhere(rows):  # times and the lake's own URIs differ between the two lakes
        return [{k: v for k, v in r.items() if "created" not in k and "uri" not in k}
                for r in rows]

    assert len(s3_status["batches"]) == 4
    assert same_anywhere(s3_status["batches"]) == same_anywhere(local_status["batches"])
    s3_con, local_con = connect(s3_lake), connect(local)
    for mix, total in ((helpfulness_mix, 20), (safety_mix, 16)):  # as in tests/test_mixes.py
        on_s3, on_disk = mix(s3_con, seed=7), mix(local_con, seed=7)
        assert on_s3.ids.to_pylist() == on_disk.ids.to_pylist()
        assert mix_record(on_s3) == mix_record(on_disk)
        assert on_s3.counts["total"] == total


def test_artifacts_round_trip_on_s3(s3_bucket, tmp_path):
    lake = Lake.open(f"s3://{s3_bucket}/artifacts")
    src = tmp_path / "ckpt"
    src.mkdir()
    files = {"model.safetensors": bytes(range(256)) * 40, "config.json": b'{"hidden": 8}'}
    for name, data in files.items():
        (src / name).write_bytes(data)
    assert not lake.has_artifact("reward_models", "rm-1")
    uri = lake.put_artifact("reward_models", "rm-1", src, {"criterion": "safety"})
    assert uri == "artifacts/reward_models/rm-1"  # relative: rows keep it
    assert lake.url(uri) == f"s3://{s3_bucket}/artifacts/artifacts/reward_models/rm-1"
    assert lake.has_artifact("reward_models", "rm-1")
    folder = lake.artifact_path("reward_models", "rm-1")
    assert not folder.startswith("s3://")
    for name, data in files.items():
        assert open(f"{folder}/{name}", "rb").read() == data
    meta = json.loads(open(f"{folder}/COMPLETE.json").read())
    assert (meta["id"], meta["criterion"]) == ("rm-1", "safety")
    with pytest.raises(LakeError, match="missing or incomplete"):
        lake.artifact_path("reward_models", "rm-2")
