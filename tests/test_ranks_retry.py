"""A reward-model retrain on two ranks whose rank 1 is killed (SIGKILL) mid-training: the stage
fails with that rank named and the signal that killed it, nothing reaches the lake, and running
the stage again trains both models on two ranks with every row written once."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
from mix_lake import build

from flywheel.config import validate_config
from flywheel.distributed.launch import Job, RankFailed, failure_report
from flywheel.lake.store import Lake
from flywheel.reward.retrain import retrain


def _rank_process(local_rank: str) -> psutil.Process | None:
    me = psutil.Process(os.getpid())
    for p in me.children(recursive=True):
        try:
            if ("flywheel.distributed.worker" in " ".join(p.cmdline())
                    and p.environ().get("LOCAL_RANK") == local_rank):
                return p
        except psutil.Error:
            continue
    return None


def _training_log(job_root) -> str:
    """Rank 0's stderr (its progress bar) in the job folder, once torchrun has made it."""
    logs = sorted(job_root.glob("*/logs/node0/*/attempt_0/0/stderr.log"))
    return logs[-1].read_text(errors="replace") if logs else ""


def test_a_killed_rank_fails_the_stage_and_the_retry_writes_once(tmp_path, tiny_llama):
    cfg = validate_config({
        "lake": str(tmp_path / "lake"),
        "models": {"policy": tiny_llama, "reward_backbone": tiny_llama},
        # many short steps: rank 1 is killed after the first, long before the last
        "reward_model": {"learning_rate": 1e-3, "epochs": 40, "batch_size": 2,
                         "micro_batch_size": 1, "max_length": 64,
                         "mix": {"allow_short": True}, "promotion_tolerance": 0.5,
                         "resources": {"ranks_per_node": 2,
                                       "job_root": str(tmp_path / "jobs")}},
    })
    lake = build(Lake.open(cfg.lake))
    failed: list[BaseException] = []

    def first_try():
        try:
            retrain(cfg, lake, iteration=1, kinds=("helpfulness",))
        except BaseException as e:  # noqa: BLE001 (handed to the test's thread)
            failed.append(e)

    stage = threading.Thread(target=first_try)
    stage.start()
    deadline = time.monotonic() + 180
    while "helpfulness reward model:" not in _training_log(tmp_path / "jobs") or \
            " 1/" not in _training_log(tmp_path / "jobs"):
        assert time.monotonic() < deadline, "training never started"
        assert stage.is_alive(), f"the stage ended before the kill: {failed}"
        time.sleep(0.05)
    victim = _rank_process("1")
    assert victim is not None
    victim.send_signal(signal.SIGKILL)
    stage.join(timeout=120)
    assert not stage.is_alive()
    (error,) = failed
    assert isinstance(error, RankFailed), error
    assert "rank 1 (node 0, local rank 1) failed: killed by SIGKILL" in str(error)
    assert not lake.rows("reward_models")  # no rank writes the lake; the stage did not get to

    again = retrain(cfg, lake, iteration=1, kinds=("helpfulness",))["helpfulness"]
    rows = lake.rows("reward_models")
    assert [r["id"] for r in rows] == [again["id"]]
    assert len(json.loads(rows[0]["metrics"])["training"]["ranks"]) == 2
    # a second retry finds the model made and trains nothing
    assert retrain(cfg, lake, iteration=1, kinds=("helpfulness",))["helpfulness"] == again
    assert len(lake.rows("reward_models")) == 1



# torchrun's summary when the killed rank's peer is reaped first: its collective broke, it wrote
# an error file, and the agent stopped it (SIGTERM) and named it the root cause; the killed rank
# is listed among the other failures
AGENT_SUMMARY = """\
torch.distributed.elastic.multiprocessing.api: Sending process 7847 closing signal SIGTERM
============================================================
flywheel.distributed.worker FAILED
------------------------------------------------------------
Failures:
[0]:
  time      : 2026-12-07_22:09:44
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 7848)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 7848
------------------------------------------------------------
Root Cause (first observed failure):
[1]:
  time      : 2026-12-07_22:09:43
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 7847)  (SIGTERM)
  error_file: {error_file}
  traceback : Traceback (most recent call last):
    RuntimeError: Connection closed by peer
============================================================
"""


def test_the_killed_rank_is_named_when_its_peer_is_named_the_root_cause(tmp_path):
    error_file = tmp_path / "error.json"
    error_file.write_text(json.dumps({"message": {"message": "Connection closed by peer"}}))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "agent0.log").write_text(AGENT_SUMMARY.format(error_file=error_file))
    report = failure_report(Job(tmp_path, "reward_model", 1, 2, "127.0.0.1:1"), {0: 1})
    assert "rank 1 (node 0, local rank 1) failed: killed by SIGKILL" in report
    assert "Connection closed" not in report
