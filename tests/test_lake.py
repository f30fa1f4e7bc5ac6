import json
import subprocess
from pathlib import Path

import pytest

from flywheel import __version__
from flywheel.errors import LakeError
from flywheel.lake.catalog import connect, format_status, status
from flywheel.lake.store import Lake


def _prompt(i):
    return {"id": f"p{i}", "messages": json.dumps([{"role": "user", "content": f"q{i}"}]),
            "source": "t", "criterion": "helpfulness", "split": "train"}


def test_write_read_and_rewrite_is_a_no_op(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    first = lake.write("prompts", [_prompt(1), _prompt(2), _prompt(2)], {"why": "test"})
    assert (first.written, first.skipped) == (2, 1)
    again = lake.write("prompts", [_prompt(1), _prompt(2)])
    assert (again.part, again.written, again.skipped) == (None, 0, 2)
    more = lake.write("prompts", [_prompt(2), _prompt(3)])
    assert (more.written, more.skipped) == (1, 1)
    assert sorted(lake.ids("prompts")) == ["p1", "p2", "p3"]
    manifest = lake.manifests("prompts")[0]
    assert manifest["lineage"] == {"why": "test"} and manifest["rows"] == 2


def test_a_manifest_records_the_code_revision_that_wrote_it(tmp_path):
    """In this checkout: the version, then the commit the tests run at (and `.dirty` when
    tracked files differ from it), not the bare package version."""
    lake = Lake.open(str(tmp_path / "lake"))
    lake.write("prompts", [_prompt(1)])
    (manifest,) = lake.manifests("prompts")
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                          capture_output=True, text=True)
    if head.returncode:
        pytest.skip("not a git checkout: the revision is the installed source's hash")
    commit = head.stdout.strip()
    assert manifest["code_version"].removesuffix(".dirty") == f"{__version__}+g{commit}"


def test_a_part_without_manifest_is_invisible(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    res = lake.write("prompts", [_prompt(1)])
    # simulate a crash between the Parquet file and its manifest: remove the manifest
    (tmp_path / "lake" / "manifests" / "prompts" / f"{res.part}.json").unlink()
    assert lake.rows("prompts") == []
    assert connect(lake).execute("select count(*) from prompts").fetchone()[0] == 0


def test_duckdb_views_and_status(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    lake.write("prompts", [_prompt(1), _prompt(2)])
    lake.write("iterations", [{
        "id": "it1", "iteration": 1, "policy_in": "a", "policy_out": "b",
        "reward_model_id": "r", "batch_id": "x", "promoted": True, "decision": "promoted: ok",
        "metrics": json.dumps({"win_rate": 0.75, "win_rate_helpful": 0.8,
                               "harmful_answered_new": 0.25}),
        "report_uri": "file:///r.md",
    }])
    con = connect(lake)
    assert con.execute("select count(*) from prompts").fetchone()[0] == 2
    assert con.execute("select count(*) from samples").fetchone()[0] == 0  # empty, typed view
    report = status(lake)
    assert report["counts"]["prompts"] == 2
    assert report["iterations"][0]["metrics"]["win_rate"] == 0.75
    text = format_status(report)
    assert ("#1: a -> b promoted; win rate 0.75 (helpful prompts 0.80), harmful answered 0.25"
            in text)


def test_artifacts_are_complete_only_after_marker(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "weights.bin").write_bytes(b"123")
    assert not lake.has_artifact("policies", "x")
    with pytest.raises(LakeError, match="re-run the stage"):
        lake.artifact_path("policies", "x")
    lake.put_artifact("policies", "x", src, {"parent": "p"})
    path = lake.artifact_path("policies", "x")
    assert open(f"{path}/weights.bin", "rb").read() == b"123"


def test_unwritable_lake_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(LakeError, match="unreachable or not writable.*--lake"):
        Lake.open(str(blocker / "lake"))


def test_unknown_table(tmp_path):
    with pytest.raises(LakeError, match="unknown table"):
        Lake.open(str(tmp_path)).write("nope", [])
