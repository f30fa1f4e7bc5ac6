"""`flywheel serve` end to end on a real `prefect server start` (the session's `live_server`): a
file dropped into the lake's incoming/ folder is picked up by the scheduled inbox deployment, its
batch-landed event triggers the retrain deployment, and a reward model lands. About 2 minutes on
an idle machine, much longer on a loaded one (hence the generous waits, which print the logs of
the server and of `flywheel serve` when they run out): slow marker."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml
from servers import BIN, wait_until

from flywheel.flows.server import stop_process
from flywheel.lake.store import Lake

pytestmark = pytest.mark.slow


def test_serve_ingests_dropped_files_and_retrains(tmp_path, tiny_config, live_server):
    env = {**os.environ, **live_server.client_env(tmp_path / "prefect")}
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config.model_dump()))
    lake = Lake.open(tiny_config.lake)
    rows = [{"prompt": f"How do I do task {i}?", "response_a": f"Step one of task {i}.",
             "response_b": f"No {i}.", "chosen": "a", "strength": "better",
             "criterion": "helpfulness", "annotator": "ann-1"} for i in range(8)]
    lake.write_bytes("incoming/week-1.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    logs = [live_server.log, tmp_path / "serve.log"]
    with open(logs[1], "wb") as out:
        serve = subprocess.Popen([str(BIN / "flywheel"), "serve", "--config", str(cfg),
                                  "--poll", "10", "--debounce", "5"], env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    procs = [live_server.proc, serve]
    try:
        wait_until(lambda: lake.rows("batches"), 300, "the inbox to ingest the dropped file",
                   procs, logs, interval=2)
        (batch,) = lake.rows("batches")
        assert (batch["batch_id"], batch["accepted"]) == ("week-1", 8)
        wait_until(lambda: lake.rows("reward_models"), 600, "the triggered retrain", procs, logs,
                   interval=2)
        (rm,) = lake.rows("reward_models")  # helpfulness rows only: no safety model yet
        assert rm["criterion"] == "helpfulness" and rm["promoted"]
        assert json.loads(rm["data_mix"])["batches"] == ["week-1"]
    finally:
        stop_process(serve)
