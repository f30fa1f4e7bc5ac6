import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from flywheel import __version__
from flywheel.errors import LakeError
from flywheel.lake.catalog import connect, format_status, status
from flywheel.lake.store import Lake
from flywheel.reward.retrain import current_models


def _prompt(i):
    return {"id": f"p{i}", "messages": json.dumps([{"role": "user", "content": f"q{i}"}]),
            "source": "t", "criterion": "helpfulness", "split": "train"}


def test_write_read_and_rewrite_is_a_no_op(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    first = lake.write("prompts", [_prompt(1), _prompt(2), _prompt(2)], {"why": "test"})
    assert (first.written, first.skipped) == (2, 1)
    again = lake.write("prompts", [_prompt(1), _prompt(2)])
    assert (again.version, again.written, again.skipped) == (None, 0, 2)
    more = lake.write("prompts", [_prompt(2), _prompt(3)])
    assert (more.version, more.written, more.skipped) == (first.version + 1, 1, 1)
    assert sorted(lake.ids("prompts")) == ["p1", "p2", "p3"]
    (first_commit,) = [c for c in lake.history("prompts") if c["version"] == first.version]
    assert first_commit["lineage"] == {"why": "test"}
    assert first_commit["operationMetrics"]["num_target_rows_inserted"] == 2
    # time travel: the table as the first write left it
    assert sorted(lake.read("prompts", ["id"], version=first.version).column("id").to_pylist()
                  ) == ["p1", "p2"]


def test_a_commit_records_the_code_revision_that_wrote_it(tmp_path):
    """In this checkout: the version, then the commit the tests run at (and `.dirty` when
    tracked files differ from it), not the bare package version."""
    lake = Lake.open(str(tmp_path / "lake"))
    lake.write("prompts", [_prompt(1)])
    written = lake.history("prompts")[0]
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                          capture_output=True, text=True)
    if head.returncode:
        pytest.skip("not a git checkout: the revision is the installed source's hash")
    commit = head.stdout.strip()
    assert written["code_version"].removesuffix(".dirty") == f"{__version__}+g{commit}"


def test_a_write_killed_before_its_commit_is_invisible(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    lake.write("prompts", [_prompt(1)])
    # what a writer killed between its data file and its commit leaves: a file no commit names
    folder = tmp_path / "lake" / "delta" / "prompts"
    (orphan,) = [p for p in folder.glob("*.parquet")]
    (folder / "part-orphan.parquet").write_bytes(orphan.read_bytes())
    lake.write("prompts", [_prompt(2)])
    assert sorted(lake.ids("prompts")) == ["p1", "p2"]
    assert connect(lake).execute("select count(*) from prompts").fetchone()[0] == 2


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


def _rm(id_, iteration, criterion, promoted, second):
    return {"id": id_, "iteration": iteration, "criterion": criterion, "uri": "u",
            "backbone": "b", "parents": "[]", "data_mix": "{}", "metrics": "{}",
            "promoted": promoted, "decision": "", "created_at": datetime(2024, 1, 1, 0, 0, second,
                                                                         tzinfo=timezone.utc)}


def _policy(id_, iteration, method, parent):
    return {"id": id_, "iteration": iteration, "uri": "u", "parent_id": parent,
            "method": method, "reward_model_id": None, "safety_reward_model_id": None,
            "training_data": "{}", "metrics": "{}"}


def _iteration(n, policy_in, policy_out, promoted):
    return {"id": f"it{n}", "iteration": n, "policy_in": policy_in, "policy_out": policy_out,
            "reward_model_id": "h", "batch_id": "x", "promoted": promoted, "decision": "d",
            "metrics": "{}", "report_uri": "r"}


def test_status_stars_the_models_in_use(tmp_path):
    """Reward models: h2 replaced h1; s2 failed its gate, so s1 stays. Policies: iteration 1
    promoted p1, iteration 2's candidate p2 (PPO on p2rs) was rolled back, so iteration 3
    starts from p1 again; before any iteration, from the base."""
    lake = Lake.open(str(tmp_path / "lake"))
    lake.write("reward_models", [_rm("h1", 1, "helpfulness", True, 1),
                                 _rm("s1", 1, "safety", True, 2),
                                 _rm("h2", 2, "helpfulness", True, 3),
                                 _rm("s2", 2, "safety", False, 4)])
    lake.write("policies", [_policy("base", 0, "base", None),
                            _policy("p1", 1, "rejection_sampling", "base")])
    assert [p["id"] for p in status(lake)["policies"] if p["in_use"]] == ["base"]
    lake.write("policies", [_policy("p2rs", 2, "rejection_sampling", "p1"),
                            _policy("p2", 2, "ppo", "p2rs")])
    lake.write("iterations", [_iteration(1, "base", "p1", True),
                              _iteration(2, "p1", "p2", False)])
    report = status(lake)
    in_use = {r["id"] for r in report["reward_models"] if r["in_use"]}
    assert in_use == {"h2", "s1"} == {r["id"] for r in current_models(lake).values()}
    assert [p["id"] for p in report["policies"] if p["in_use"]] == ["p1"]
    text = format_status(report)
    assert " *h2 iteration 2" in text and " *s1 iteration 1" in text
    assert "  h1 iteration 1" in text and "  s2 iteration 2" in text
    assert " *p1 iteration 1" in text and "  base iteration 0" in text
    assert "  p2 iteration 2" in text


def test_many_processes_opening_one_lake_at_once_all_succeed(tmp_path):
    """Each opening proves the lake writable with a probe file of its own: openers never
    delete each other's."""
    from concurrent.futures import ThreadPoolExecutor

    uri = str(tmp_path / "lake")
    with ThreadPoolExecutor(8) as pool:
        opened = list(pool.map(lambda _: Lake.open(uri), range(32)))
    assert {lake.uri for lake in opened} == {uri}
    assert sorted(p.name for p in (tmp_path / "lake").iterdir()) == ["lake.json"]


EXIT_SCRIPT = """
import sys, tempfile
from flywheel.lake.store import Lake
for _ in range(2):
    lake = Lake.open(tempfile.mkdtemp())
    lake.write("quarantine", [{"id": "a", "row": "{}", "reason": "x"}])
    assert lake.rows("quarantine")[0]["id"] == "a"
    assert lake.read("quarantine", ["id"], version=lake.version("quarantine")).num_rows == 1
print("ok")
"""


def test_a_process_that_wrote_and_read_the_lake_exits_cleanly():
    """Reading through delta-rs' pyarrow dataset left threads that aborted the interpreter
    at exit in about a third of runs ("terminate called without an active exception"): a
    command that had done its work exited 134. The lake reads the data files itself."""
    codes = [subprocess.run([sys.executable, "-c", EXIT_SCRIPT], capture_output=True,
                            text=True, timeout=120) for _ in range(8)]
    assert [(c.returncode, c.stdout.strip()) for c in codes] == [(0, "ok")] * 8, [
        c.stderr[-300:] for c in codes if c.returncode]
