"""`flywheel serve` end to end on a real `prefect server start`: a file dropped into the lake's
incoming/ folder is picked up by the scheduled inbox deployment, its batch-landed event triggers
the retrain deployment, and a reward model lands. About 2 minutes on an idle machine, much
longer on a loaded one (hence the generous waits, which print the logs of both processes when
they run out): slow marker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flywheel.lake.store import Lake

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return f"--- {path.name} (last {lines} lines) ---\n" + "\n".join(text.splitlines()[-lines:])


def _wait(predicate, seconds: float, what: str, procs, logs=()) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{p.args[:3]} exited with {p.returncode} before {what}\n"
                                     + "\n".join(_tail(Path(f.name)) for f in logs))
        if time.monotonic() > deadline:
            for f in logs:
                f.flush()
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}\n"
                                 + "\n".join(_tail(Path(f.name)) for f in logs))
        time.sleep(2)


def test_serve_ingests_dropped_files_and_retrains(tmp_path, tiny_config):
    from flywheel.flows.server import healthy

    bin_dir = Path(sys.executable).parent
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config.model_dump()))
    lake = Lake.open(tiny_config.lake)
    rows = [{"prompt": f"How do I do task {i}?", "response_a": f"Step one of task {i}.",
             "response_b": f"No {i}.", "chosen": "a", "strength": "better",
             "criterion": "helpfulness", "annotator": "ann-1"} for i in range(8)]
    lake.write_bytes("incoming/week-1.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    logs = open(tmp_path / "server.log", "wb"), open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen([str(bin_dir / "prefect"), "server", "start", "--host",
                               "127.0.0.1", "--port", str(port)], env=env, stdout=logs[0],
                              stderr=subprocess.STDOUT, start_new_session=True)
    procs = [server]
    try:
        _wait(lambda: healthy(api), 120, "the Prefect server", procs, logs)
        serve = subprocess.Popen([str(bin_dir / "flywheel"), "serve", "--config", str(cfg),
                                  "--poll", "10", "--debounce", "5"], env=env, stdout=logs[1],
                                 stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(serve)
        _wait(lambda: lake.rows("batches"), 300, "the inbox to ingest the dropped file", procs,
              logs)
        (batch,) = lake.rows("batches")
        assert (batch["batch_id"], batch["accepted"]) == ("week-1", 8)
        _wait(lambda: lake.rows("reward_models"), 600, "the triggered retrain", procs, logs)
        (rm,) = lake.rows("reward_models")  # helpfulness rows only: no safety model yet
        assert rm["criterion"] == "helpfulness" and rm["promoted"]
        assert json.loads(rm["data_mix"])["batches"] == ["week-1"]
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs:
            f.close()
