"""Correcting landed batches (flywheel/annotation/batches.py, `flywheel batch`, `flywheel
quarantine`) and the split rules of imports and ingests, on real lakes built through ingest
(tests/mix_lake.py: week-1 holds 6 + 4 in-house train rows and 2 + 1 test rows, week-2 4 + 2
train and 1 + 1 test)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from mix_lake import build, jsonl, row

from flywheel.annotation.batches import resplit, restore, retract
from flywheel.annotation.importers import import_split, name_split
from flywheel.annotation.ingest import ingest_bytes
from flywheel.annotation.reasons import REASON_HELP
from flywheel.annotation.validation import REASONS
from flywheel.errors import DataError
from flywheel.flows.cli import main
from flywheel.lake.catalog import connect, format_status, status
from flywheel.lake.store import Lake
from flywheel.reward.mixes import helpfulness_mix, safety_mix

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def lake(tmp_path) -> Lake:
    return build(Lake.open(str(tmp_path / "lake")))


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _batch_ids(lake: Lake, split: str | None = None) -> set[str]:
    con = connect(lake)
    try:
        return {b for (b,) in con.execute(
            "SELECT batch_id FROM comparisons WHERE $split IS NULL OR split = $split",
            {"split": split}).fetchall()}
    finally:
        con.close()


def test_retract_takes_a_batchs_rows_out_of_every_mix_and_restore_brings_them_back(lake):
    before = helpfulness_mix(lake).counts
    assert before["in-house helpfulness"] == 10
    batches_version = lake.version("batches")

    change = retract(lake, "week-1", reason="labels swapped")
    assert (change.deliveries, change.comparisons) == (1, 13)
    assert "week-1 retracted: 1 delivery, 13 comparisons left" in change.summary()
    assert helpfulness_mix(lake).counts["in-house helpfulness"] == 4  # week-2's only
    assert safety_mix(lake).counts["in-house safety"] == 2
    assert "week-1" not in _batch_ids(lake)
    # nothing deleted: the batches row, the rows and the delivered file stay
    row_ = next(r for r in lake.rows("batches") if r["batch_id"] == "week-1")
    assert row_["status"] == "retracted"
    assert lake.exists(row_["raw_uri"])
    assert len(lake.read("comparisons")) == 36
    old = lake.read("batches", version=batches_version).to_pylist()
    assert {r["status"] for r in old} == {"complete"}
    assert lake.history("batches", 1)[0]["lineage"] == {
        "action": "retract", "batch": "week-1", "comparisons": 13,
        "deliveries": [row_["id"]], "reason": "labels swapped"}
    assert "retracted: its rows are in no mix" in format_status(status(lake))
    assert retract(lake, "week-1").deliveries == 0  # already: nothing to do

    back = restore(lake, "week-1")
    assert (back.deliveries, back.comparisons) == (1, 13)
    assert helpfulness_mix(lake).counts == before


def test_resplit_moves_a_batch_to_test_and_out_of_the_train_mix(lake):
    before = lake.version("comparisons")
    change = resplit(lake, "week-2", "test", reason="held out for the week-3 evaluation")
    assert (change.comparisons, change.unchanged) == (6, 2)  # 2 test rows already
    assert "6 comparisons moved to test, 2 were test already" in change.summary()
    assert "week-2" not in _batch_ids(lake, "train")
    assert helpfulness_mix(lake).counts["in-house helpfulness"] == 6  # week-1's only
    assert resplit(lake, "week-2", "test").comparisons == 0  # already: no commit
    assert lake.version("comparisons") == change.version == before + 1
    # the earlier version still has them as train
    old = lake.read("comparisons", ["batch_id", "split"], version=before).to_pylist()
    assert sum(r["batch_id"] == "week-2" and r["split"] == "train" for r in old) == 6
    assert lake.history("comparisons", 1)[0]["lineage"]["reason"] == (
        "held out for the week-3 evaluation")
    retract(lake, "week-2")
    with pytest.raises(DataError, match="flywheel batch restore week-2"):
        resplit(lake, "week-2", "train")


def test_unknown_batch_names_the_known_ones(lake):
    for action in (retract, restore):
        with pytest.raises(DataError, match="no batch 'week-9'.*hh-harmless, open-helpful, "
                                            "week-1, week-2"):
            action(lake, "week-9")


def test_rows_already_in_the_lake_under_another_split_are_refused_whole(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    rows = [row(f"r{i}", "anthropic-hh-rlhf/helpful-base", "helpfulness", "train")
            for i in range(12)]
    ingest_bytes(lake, jsonl(rows), "open.jsonl")
    versions = lake.versions()
    moved = [dict(r, split="test") for r in rows] + [
        row("fresh", "anthropic-hh-rlhf/helpful-base", "helpfulness", "test")]
    with pytest.raises(DataError) as err:
        ingest_bytes(lake, jsonl(moved), "open-test.jsonl")
    assert str(err.value).startswith(
        "12 rows of this file are already in the lake as train (batch open); to move them: "
        "flywheel batch resplit open --split test")
    assert lake.versions() == versions  # nothing written: no table, no raw file
    sha = hashlib.sha256(jsonl(moved)).hexdigest()
    assert not lake.exists(f"raw/{sha}/open-test.jsonl")
    # the same rows with their split, or none, land as rows already there
    same = ingest_bytes(lake, jsonl([{k: v for k, v in r.items() if k != "split"}
                                     for r in rows]), "open-again.jsonl")
    assert (same.accepted, same.new) == (12, 0)
    # moved on purpose, the file then lands
    resplit(lake, "open", "test")
    again = ingest_bytes(lake, jsonl(moved), "open-test.jsonl")
    assert (again.accepted, again.new) == (13, 1)
    assert {r["split"] for r in lake.rows("comparisons")} == {"test"}


def test_the_same_file_after_its_batch_was_retracted_names_restore(lake):
    from mix_lake import deliveries

    retract(lake, "week-2")
    with pytest.raises(DataError, match="flywheel batch restore week-2"):
        ingest_bytes(lake, deliveries()["week-2.jsonl"], "week-2.jsonl")


def test_split_from_the_record_the_flag_or_the_file_name():
    assert [name_split(n) for n in ("x_test.jsonl", "week-3-test-b.csv", "test.jsonl",
                                    "hh_rlhf_harmless_base_test_dev.jsonl.gz", "TRAIN.parquet",
                                    "latest.jsonl", "contest_train_test.jsonl", "data/test/x.json",
                                    "owner/train-prefs")] == [
        "test", "test", "test", "test", "train", None, None, None, "train"]
    assert import_split("x_test.jsonl") == ("test", "from the file name")
    assert import_split("x.jsonl") == (
        "train", "the default: no --split, and no train or test in the file name")
    assert import_split("x_test.jsonl", "test") == ("test", "from --split")
    assert import_split("x_test.jsonl", "train") == (
        "train", "from --split, over the file name, which says test")


HH = {"chosen": "\n\nHuman: how do I bake bread {i}?\n\nAssistant: knead, rise, bake {i}",
      "rejected": "\n\nHuman: how do I bake bread {i}?\n\nAssistant: no idea {i}"}


def _hh_file(path: Path, n: int, **extra) -> Path:
    path.write_text("".join(json.dumps({k: v.format(i=i) for k, v in HH.items()} | extra) + "\n"
                            for i in range(n)))
    return path


def test_import_takes_the_split_from_the_file_name_and_refuses_a_move(capsys, tmp_path,
                                                                      monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    lake = str(tmp_path / "lake")
    path = _hh_file(tmp_path / "hh_helpful_base_test.jsonl", 5)
    rc, out, err = _run(capsys, "import", str(path), "--lake", lake)
    assert rc == 0, err
    assert out.splitlines()[0] == "split: test (from the file name)"
    assert {r["split"] for r in Lake.open(lake).rows("comparisons")} == {"test"}
    batch = Lake.open(lake).rows("batches")[0]["batch_id"]
    # the flag wins over the name, and says so; rows already test are refused as train
    rc, out, err = _run(capsys, "import", str(path), "--lake", lake, "--split", "train")
    assert out.splitlines()[0] == ("split: train (from --split, over the file name, which "
                                   "says test)")
    assert rc == 2 and (f"5 rows of this file are already in the lake as test (batch {batch}); "
                        f"to move them: flywheel batch resplit {batch} --split train") in err
    assert len(Lake.open(lake).rows("batches")) == 1
    # records naming their own split keep it
    own = _hh_file(tmp_path / "hh_helpful_base_more.jsonl", 2, split="test")
    rc, out, err = _run(capsys, "import", str(own), "--lake", lake, "--split", "train")
    assert out.splitlines()[0] == ("split: train (from --split); records that name their own "
                                   "split keep it: 2 test")


def test_batch_commands(capsys, lake):
    rc, out, err = _run(capsys, "batch", "retract", "week-1", "--lake", lake.uri, "--reason",
                        "labels swapped")
    assert rc == 0, err
    assert out.strip() == ("batch week-1 retracted: 1 delivery, 13 comparisons left the mixes "
                           f"and test sets (batches version {lake.version('batches')})")
    rc, out, _ = _run(capsys, "status", "--lake", lake.uri)
    line = next(s for s in out.splitlines() if s.strip().startswith("week-1 "))
    assert line.endswith("; retracted: its rows are in no mix or test set")
    rc, out, _ = _run(capsys, "batch", "restore", "week-1", "--lake", lake.uri)
    assert rc == 0 and "week-1 restored" in out
    rc, out, _ = _run(capsys, "batch", "resplit", "week-1", "--split", "test", "--lake",
                      lake.uri, "--json")
    assert rc == 0 and json.loads(out)["comparisons"] == 10
    rc, _, err = _run(capsys, "batch", "retract", "week-9", "--lake", lake.uri)
    assert rc == 2 and "no batch 'week-9'" in err and "week-1, week-2" in err


def test_quarantine_shows_line_field_value_and_fix(capsys, lake):
    good = row("q0", "in-house", "helpfulness", "train")
    bad = [dict(row("q1", "in-house", "helpfulness", "train"), chosen="c"),
           dict(row("q2", "in-house", "helpfulness", "train"), annotator=None),
           dict(row("q3", "in-house", "helpfulness", "train"), response_b="x" * 33000)]
    ingest_bytes(lake, jsonl([good, *bad]), "week-3.jsonl")
    rc, out, err = _run(capsys, "quarantine", "week-3", "--lake", lake.uri)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "batch week-3: 3 of 4 delivered rows rejected"
    assert lines[1] == "  line 2: invalid_chosen, chosen = 'c'"
    assert lines[2] == f"      {REASON_HELP['invalid_chosen']}"
    assert lines[3] == "  line 3: missing_annotator, annotator = (missing)"
    assert lines[5] == "  line 4: oversize_text, response_b = '" + "x" * 56 + "..."
    rc, out, _ = _run(capsys, "quarantine", "week-3", "--lake", lake.uri, "--limit", "1",
                      "--json")
    report = json.loads(out)
    assert (report["rejected"], report["shown"]) == (3, 1)
    assert report["rows"][0] | {"help": None} == {
        "file": "week-3.jsonl", "line": 2, "reason": "invalid_chosen", "field": "chosen",
        "value": "'c'", "help": None, "status": "complete"}
    rc, _, err = _run(capsys, "quarantine", "week-9", "--lake", lake.uri)
    assert rc == 2 and "no batch 'week-9'" in err


def test_every_reason_has_help():
    importers = (ROOT / "flywheel" / "annotation" / "importers.py").read_text()
    own = set(re.findall(r'_reject\("(import_[a-z_]+)"', importers))
    assert own == {"import_missing_field", "import_unparseable_dialogue",
                   "import_prompt_mismatch", "import_unknown_split"}
    assert set(REASON_HELP) == set(REASONS) | own | {"gold_pair"}  # annotation/gold.py


def test_every_reason_with_help_is_in_the_reasons_doc():
    text = (ROOT / "docs" / "ingest-reasons.md").read_text(encoding="utf-8")
    assert sorted(r for r in REASON_HELP if r not in text) == []
