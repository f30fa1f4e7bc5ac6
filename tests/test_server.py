"""`flows.server.local_server`, the Prefect server `flywheel demo` starts for its run: a real
`prefect server start` on a free port, with its database under a temporary PREFECT_HOME."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from prefect import flow, task, get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from flows.server import local_server

    @task
    def step(i):
        get_run_logger().info("step %d says hello", i)

    @flow
    def tiny():
        for i in range(3):
            step(i)
        get_run_logger().info("the flow's last line")

    port = int(sys.argv[1])
    with local_server(port=port) as url, temporary_settings({PREFECT_API_URL: url}):
        tiny()
    print("server stopped")

    async def messages():
        async with get_client() as client:
            return [log.message for log in await client.read_logs()]

    # The same database, served again: what reached the first server is there.
    with local_server(port=port) as url, temporary_settings({PREFECT_API_URL: url}):
        for m in asyncio.run(messages()):
            print("stored:", m)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_logs_reach_the_server_before_it_stops(tmp_path):
    """The logs still queued when a run ends are sent before the server started for it is
    stopped: none is lost, and the command does not end on "Error logging to API"."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), TMPDIR=str(tmp_path),
               PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(_free_port())], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "server stopped" in p.stdout
    assert "Error logging to API" not in p.stderr, p.stderr[-3000:]
    stored = [line for line in p.stdout.splitlines() if line.startswith("stored:")]
    assert "stored: the flow's last line" in stored
    assert sum("says hello" in line for line in stored) == 3
