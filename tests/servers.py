"""Servers for the tests that need real processes: a free port, `wait_until` for polling with a
deadline (and the logs of the processes involved when it runs out), and a `prefect server start`
as a context manager, stopped with flywheel.flows.server.stop_process.

    with prefect_server(tmp_path / "prefect") as server:
        subprocess.run(["flywheel", "run", ...], env={**os.environ, **server.client_env()})

Imported as `servers` (tests/ is on sys.path under pytest, as for mix_lake and postgres)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from flywheel.flows.server import healthy, stop_process

BIN = Path(sys.executable).parent
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file, headed by its name, for a failure message."""
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return f"--- {path.name} (last {lines} lines) ---\n" + "\n".join(text.splitlines()[-lines:])


def wait_until(predicate: Callable[[], T], seconds: float, what: str,
               procs: Sequence[subprocess.Popen] = (), logs: Sequence[Path] = (),
               interval: float = 1.0) -> T:
    """Call `predicate` every `interval` seconds until it returns something truthy, and return
    that. Fails (AssertionError, with the tails of `logs`) after `seconds`, or as soon as one of
    `procs` has exited: a process that died will not make the predicate true."""
    deadline = time.monotonic() + seconds
    while not (value := predicate()):
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{p.args[:3]} exited with {p.returncode} before {what}\n"
                                     + "\n".join(tail(Path(f)) for f in logs))
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}\n"
                                 + "\n".join(tail(Path(f)) for f in logs))
        time.sleep(interval)
    return value


@dataclass
class PrefectServer:
    """A running `prefect server start`: its API URL, process, log and PREFECT_HOME."""

    api: str
    proc: subprocess.Popen
    log: Path
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ui(self) -> str:
        return self.api.removesuffix("/api")

    def client_env(self, home: Path | None = None) -> dict[str, str]:
        """Environment variables for a client process of this server (`flywheel`, `prefect`),
        with its own PREFECT_HOME when `home` is given, else the server's."""
        return {"PREFECT_API_URL": self.api, "PREFECT_HOME": str(home or self.home),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


@contextlib.contextmanager
def prefect_server(home: Path, env: dict[str, str] | None = None, services: bool = True,
                   ui: bool = True, clean_env: bool = False,
                   start_timeout: float = 120) -> Iterator[PrefectServer]:
    """`prefect server start` on a free port with its SQLite database (unless `env` names
    another) in `home`; yields it once /api/health answers and stops it on exit. `env` adds to
    the server's environment; `clean_env` drops the caller's PREFECT_* and FLYWHEEL_* variables
    first. Without `services` the scheduler, triggers and automations do not run (API only)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    base = {k: v for k, v in os.environ.items()
            if not (clean_env and k.startswith(("PREFECT_", "FLYWHEEL_")))}
    # PREFECT_API_URL is the server's own: its services never reach a server the caller set
    server_env = {**base, "PREFECT_HOME": str(home), "PREFECT_API_URL": api,
                  "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(env or {})}
    argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    argv += [] if services else ["--no-services"]
    argv += [] if ui else ["--no-ui"]
    log = home / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=server_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_until(lambda: healthy(api), start_timeout, "the Prefect server", [proc], [log],
                   interval=0.5)
        yield PrefectServer(api, proc, log, home, server_env)
    finally:
        stop_process(proc)
