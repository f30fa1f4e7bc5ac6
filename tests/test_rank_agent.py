"""`flywheel rank-agent`, the command the other nodes of a multi-node training stage run: the
real console script as node 1 joins a reward model's training that this process starts as
node 0 (`agents: external`, gloo on this CPU, a few seconds), and it refuses node 0 or a job
folder that is not there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_reward_model import PAIRS

from flywheel.config import RewardModelConfig
from flywheel.distributed.launch import _free_endpoint
from flywheel.flows.cli import main
from flywheel.reward.model import RewardModel
from flywheel.reward.train import fit_reward_model, train_reward_model

FLYWHEEL = str(Path(sys.executable).with_name("flywheel"))
RM = dict(batch_size=4, micro_batch_size=1, learning_rate=1e-3, max_length=64, seed=3)


def test_rank_agent_joins_a_two_node_reward_model_training(tiny_llama, tmp_path):
    """Node 1 is `flywheel rank-agent --once` in its own process; node 0's agent is started by
    fit_reward_model. Two nodes of one rank take the steps of one rank (9 pairs in steps of 4,
    split 2 + 2 and 1 + a weight-0 stand-in): the same weights to float tolerance."""
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    agent = subprocess.Popen(
        [FLYWHEEL, "rank-agent", "--job-root", str(jobs), "--node-rank", "1", "--once",
         "--idle-timeout", "120", "--poll", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")})
    try:
        pairs = (PAIRS * 3)[:9]
        model, got = fit_reward_model(tiny_llama, pairs, RewardModelConfig(
            **RM, resources={"nodes": 2, "ranks_per_node": 1, "agents": "external",
                             "job_root": str(jobs), "rdzv_endpoint": _free_endpoint()}))
        _, err = agent.communicate(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, err
    assert f"rank-agent node 1: joining reward_model ({jobs}/reward_model-" in err
    assert f"rank-agent node 1: joined 1 job(s) from {jobs}" in err
    assert [r["rank"] for r in got["ranks"]] == [0, 1]
    assert list(jobs.iterdir()) == []  # a finished job's folder is removed, weights and all

    one, _ = train_reward_model(tiny_llama, pairs, RewardModelConfig(**RM))
    a, b = one.state_dict(), model.state_dict()
    start = RewardModel.from_backbone(tiny_llama).state_dict()
    assert max((a[k] - start[k]).abs().max().item() for k in start if k in a) > 1e-3  # trained
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-5


def test_rank_agent_refuses_node_zero_and_a_missing_job_folder(tmp_path, capsys):
    assert main(["rank-agent", "--job-root", str(tmp_path), "--node-rank", "0"]) == 2
    err = capsys.readouterr().err
    assert "--node-rank 0: node 0 is the stage's own node" in err
    assert "with --node-rank 1 to nodes - 1" in err and "Traceback" not in err
    assert main(["rank-agent", "--job-root", str(tmp_path / "nope"), "--node-rank", "1"]) == 2
    err = capsys.readouterr().err
    assert f"no folder {tmp_path / 'nope'}: mount the folder" in err and "--job-root" in err


def _job(root: Path, name: str, nodes: int, finished: bool) -> None:
    (root / name / "logs").mkdir(parents=True)
    (root / name / "job.json").write_text(json.dumps(
        {"kind": "reward_model", "nodes": nodes, "ranks_per_node": 1,
         "endpoint": "127.0.0.1:9", "timeout_s": 60}))
    if finished:
        (root / name / "out").mkdir()
        (root / name / "out" / "result.json").write_text("{}")


@pytest.mark.parametrize("node, nodes, finished", [(2, 2, False), (1, 3, True)])
def test_rank_agent_joins_nothing_it_is_not_needed_for(tmp_path, node, nodes, finished):
    """A job of two nodes asks nothing of node 2, and a finished one nothing of anyone: with
    --idle-timeout the agent leaves having joined none."""
    _job(tmp_path, "reward_model-20250101-000000-abcd1234", nodes, finished)
    p = subprocess.run([FLYWHEEL, "rank-agent", "--job-root", str(tmp_path), "--node-rank",
                        str(node), "--idle-timeout", "0.5", "--poll", "0.1"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"rank-agent node {node}: joined 0 job(s)" in p.stderr
    assert "joining" not in p.stderr
