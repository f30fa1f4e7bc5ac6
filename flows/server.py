"""A local Prefect server for the demo: reuse one that answers, else start one for the run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

from flywheel.errors import FlywheelError

DEFAULT_URL = "http://127.0.0.1:4200/api"


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate a server process, killing it if it has not exited after `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def _flush_to_api(timeout: float = 10.0) -> None:
    """Send the run logs and events still queued for the API, while the server is up: left
    for the interpreter's exit they meet a stopped server ("Error logging to API")."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout, at_exit=False)


@contextmanager
def local_server(keep: bool = False, port: int = 4200):
    """Yield the API URL of a reachable Prefect server, starting `prefect server start` when
    PREFECT_API_URL is unset and nothing answers on the port. The server's SQLite database is
    under PREFECT_HOME, so `prefect server start` later shows the same runs."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        if not healthy(configured):
            raise FlywheelError(
                f"PREFECT_API_URL={configured} does not answer; start that server or unset "
                "PREFECT_API_URL to let `flywheel demo` start a local one"
            )
        yield configured
        return
    url = f"http://127.0.0.1:{port}/api"
    if healthy(url):
        yield url
        return
    exe = shutil.which("prefect", path=os.path.dirname(sys.executable)) or shutil.which("prefect")
    if exe is None:
        raise FlywheelError("the `prefect` command is not installed; run `make demo`")
    log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), "flywheel-prefect-server.log"), "ab")
    proc = subprocess.Popen([exe, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise FlywheelError(
                    f"the local Prefect server did not start (see {log.name}); is port {port} "
                    "taken? Set PREFECT_API_URL to a running server instead"
                )
            time.sleep(1)
        yield url
    finally:
        if not keep:
            try:
                _flush_to_api()
            finally:
                stop_process(proc)
        log.close()
