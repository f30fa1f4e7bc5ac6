"""Reading a lake without writing to it (`flywheel status`, `flywheel lineage` on a read-only
folder), and a lake copied elsewhere: its rows store locations relative to the lake, so status
and lineage name the copy's files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mix_lake import jsonl, row

from flywheel.annotation.ingest import ingest_bytes
from flywheel.errors import LakeError
from flywheel.flows.cli import main
from flywheel.lake.catalog import status
from flywheel.lake.lineage import format_lineage, lineage
from flywheel.lake.store import Lake


def _small_lake(path: Path, tmp: Path) -> dict[str, str]:
    """One delivered batch, a reward model trained on it and a policy trained with that model
    (their checkpoints stand-in files put through `put_artifact`), an iteration and its report.
    Returns the ids."""
    lake = Lake.open(str(path))
    ingest_bytes(lake, jsonl([row(f"w1/{i}", "in-house", "helpfulness", "train")
                              for i in range(3)]), "week-1.jsonl")
    weights = tmp / "weights"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"weights")
    rm_uri = lake.put_artifact("reward_models", "rm1", weights, {"kind": "helpfulness"})
    lake.write("reward_models", [{
        "id": "rm1", "iteration": 1, "criterion": "helpfulness", "uri": rm_uri,
        "backbone": "tiny", "parents": json.dumps(["week-1"]),
        "data_mix": json.dumps({"counts": {"total": 3}, "seed": 0, "batches": ["week-1"],
                                "ids_file": "data_mix.parquet",
                                "table_versions": lake.versions()}),
        "metrics": "{}", "promoted": True, "decision": "promoted: the first"}])
    policy_uri = lake.put_artifact("policies", "pol1", weights, {"parent": "base1"})
    lake.write("policies", [
        {"id": "base1", "iteration": 0, "uri": "org/tiny-model", "parent_id": None,
         "method": "base", "training_data": "{}", "metrics": "{}"},
        {"id": "pol1", "iteration": 1, "uri": policy_uri, "parent_id": "base1",
         "method": "rejection_sampling", "reward_model_id": "rm1", "training_data": "{}",
         "metrics": "{}"}])
    report = lake.write_text("reports/iteration-0001.md", "# Iteration 1\n")
    lake.write("iterations", [{
        "id": "it1", "iteration": 1, "policy_in": "base1", "policy_out": "pol1",
        "reward_model_id": "rm1", "batch_id": "week-1", "promoted": True,
        "decision": "promoted", "metrics": "{}", "report_uri": report}])
    assert (rm_uri, policy_uri, report) == (
        "artifacts/reward_models/rm1", "artifacts/policies/pol1", "reports/iteration-0001.md")
    return {"rm": "rm1", "policy": "pol1"}


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder` with its size and modification time."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def test_a_read_only_open_writes_nothing(tmp_path):
    path = tmp_path / "lake"
    _small_lake(path, tmp_path)
    before = _listing(path)
    lake = Lake.open(str(path), read_only=True)
    report = status(lake)
    info = lineage(lake, "pol1")
    assert lake.artifact_path("policies", "pol1") == str(path / "artifacts/policies/pol1")
    assert report["counts"]["comparisons"] == 3 and info["ancestry"][0]["id"] == "pol1"
    assert _listing(path) == before
    with pytest.raises(LakeError, match="read-only"):
        lake.write("prompts", [{"id": "p"}])
    # no lake there: an error, and nothing is created
    with pytest.raises(LakeError, match="no lake at"):
        Lake.open(str(tmp_path / "none"), read_only=True)
    assert not (tmp_path / "none").exists()


def _freeze(folder: Path) -> list[str]:
    """Make `folder` unwritable even for root where it can (the immutable attribute); returns
    the command that undoes it, or skips the test."""
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
        return ["chmod", "-R", "u+w", str(folder)]
    if subprocess.run(["chattr", "-R", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root where the immutable attribute cannot be set: root "
                    "ignores permissions, so a read-only folder cannot be made")
    return ["chattr", "-R", "-i", str(folder)]


def test_status_and_lineage_work_on_a_read_only_lake(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "lake"
    ids = _small_lake(path, tmp_path)
    before = _listing(path)
    undo = _freeze(path)
    try:
        with pytest.raises(OSError):  # the folder really is read-only
            (path / "probe").write_text("x")
        assert main(["status", "--lake", str(path)]) == 0
        out = capsys.readouterr().out
        assert "#1: base1 -> pol1 promoted" in out and "comparisons 3" in out
        assert main(["lineage", ids["policy"], "--lake", str(path), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["ancestry"][0]["reward_models"][0]["id"] == ids["rm"]
        # a command that writes says so, naming the lake
        assert main(["ingest", str(tmp_path / "nothing.jsonl"), "--lake", str(path)]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        subprocess.run(undo, check=True)
    assert _listing(path) == before


def test_a_copied_lake_names_its_own_files(tmp_path):
    first = tmp_path / "first"
    ids = _small_lake(first, tmp_path)
    copy = tmp_path / "elsewhere" / "lake"
    shutil.copytree(first, copy)
    shutil.rmtree(first)  # nothing may point back at the original
    lake = Lake.open(str(copy), read_only=True)

    report = status(lake)
    (it,) = report["iterations"]
    assert it["report_uri"] == f"{copy}/reports/iteration-0001.md"
    assert Path(it["report_uri"]).read_text() == "# Iteration 1\n"
    (rm,) = report["reward_models"]
    assert rm["uri"] == f"{copy}/artifacts/reward_models/rm1"
    uris = {p["id"]: p["uri"] for p in report["policies"]}
    # a base policy's uri names its model, not a place in the lake
    assert uris == {"base1": "org/tiny-model", "pol1": f"{copy}/artifacts/policies/pol1"}

    info = lineage(lake, ids["policy"])
    newest, base = info["ancestry"]
    assert (newest["uri"], base["uri"]) == (uris["pol1"], "org/tiny-model")
    (used,) = newest["reward_models"]
    assert used["uri"] == rm["uri"]
    assert used["data_mix"]["ids_file"] == f"{copy}/artifacts/reward_models/rm1/data_mix.parquet"
    (delivery,) = used["deliveries"]
    assert delivery["raw_uri"].startswith(f"{copy}/raw/")
    assert Path(delivery["raw_uri"]).read_bytes().count(b"\n") == 3
    versions = used["data_mix"]["table_versions"]
    assert versions["comparisons"] == lake.version("comparisons")
    assert f"read at table versions prompts {versions['prompts']}, comparisons " \
        f"{versions['comparisons']}" in format_lineage(info)
    assert str(first) not in json.dumps(info) + json.dumps(report, default=str)

    path = lake.artifact_path("policies", ids["policy"])
    assert path == f"{copy}/artifacts/policies/pol1"
    assert (Path(path) / "model.safetensors").read_bytes() == b"weights"
