"""The demo on the default models, as a user runs it, for one iteration (behind the `slow` marker:
about 15 to 25 minutes on two CPU cores). Run with `make test-slow` or `pytest -m slow`.

`make demo` runs two iterations; the second goes through the same code paths as the first with
more data (mixed batches, the pool of earlier picks, the gate against the previous reward
models), which tests/test_flow.py checks on the tiny models. Both iterations on the default
models take 30 to 45 minutes here, too long for CI's budget beside the rest of the slow suite;
benchmarks/bench_demo_loop.py runs them and records the numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = Path(sys.executable).with_name("flywheel")


@pytest.mark.slow
def test_demo_completes_an_iteration(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    lake = tmp_path / "lake"
    run = subprocess.run([str(EXE), "demo", "--iterations", "1", "--lake", str(lake)], env=env,
                         capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "iteration 1:" in run.stdout
    st = subprocess.run([str(EXE), "status", "--lake", str(lake), "--json"], env=env,
                        capture_output=True, text=True, timeout=300)
    report = json.loads(st.stdout)
    assert [i["iteration"] for i in report["iterations"]] == [1]
    # a helpfulness and a safety reward model, each with its gate decision
    assert len(report["batches"]) == 1 and len(report["reward_models"]) == 2
    assert sorted(r["criterion"] for r in report["reward_models"]) == ["helpfulness", "safety"]
    assert all(r["decision"] for r in report["reward_models"])
    assert len([p for p in report["policies"] if p["method"] == "rejection_sampling"]) == 1
    for it in report["iterations"]:
        assert Path(it["report_uri"]).is_file()
        assert it["metrics"]["win_rate"] is not None
        text = Path(it["report_uri"]).read_text()
        assert "## Reward models" in text and "significantly better" in text
        # the evaluation: the judge with its measured agreement, the gate's three conditions,
        # the suites the demo config names, the leaderboard
        assert "**Judge:** `proxy`, which agrees with people on" in text
        assert "### The promotion gate (interval)" in text
        for condition in ("| win rate |", "| over-refusal | XSTest's safe prompts |",
                          "| harmful answers |"):
            assert condition in text
        for suite in ("xstest", "advbench", "alpaca-eval"):
            assert f"| {suite} |" in text
        assert "| alpaca-eval | win_rate_lc |" in text and "### Leaderboard" in text
        assert it["metrics"]["win_rate_helpful_ci95"] is not None
    c = report["counts"]
    assert c["samples"] > 0 and c["comparisons"] > 0 and c["scores"] > 0
    assert c["evaluations"] > 0 and c["judge_agreement"] == 1
