"""The full demo on the default models, as a user runs it (behind the `slow` marker: about 30
minutes on two CPU cores). Run with `make test-slow` or `pytest -m slow`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = Path(sys.executable).with_name("flywheel")


@pytest.mark.slow
def test_demo_completes_two_iterations(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    lake = tmp_path / "lake"
    run = subprocess.run([str(EXE), "demo", "--iterations", "2", "--lake", str(lake)], env=env,
                         capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "iteration 1:" in run.stdout and "iteration 2:" in run.stdout
    st = subprocess.run([str(EXE), "status", "--lake", str(lake), "--json"], env=env,
                        capture_output=True, text=True, timeout=300)
    report = json.loads(st.stdout)
    assert [i["iteration"] for i in report["iterations"]] == [1, 2]
    # a helpfulness and a safety reward model per iteration, each with its gate decision
    assert len(report["batches"]) == 2 and len(report["reward_models"]) == 4
    assert sorted(r["criterion"] for r in report["reward_models"]) == ["helpfulness"] * 2 + [
        "safety"] * 2
    assert all(r["decision"] for r in report["reward_models"])
    assert len([p for p in report["policies"] if p["method"] == "rejection_sampling"]) == 2
    for it in report["iterations"]:
        assert Path(it["report_uri"]).is_file()
        assert it["metrics"]["win_rate"] is not None
        text = Path(it["report_uri"]).read_text()
        assert "## Reward models" in text and "significantly better" in text
    c = report["counts"]
    assert c["samples"] > 0 and c["comparisons"] > 0 and c["scores"] > 0
