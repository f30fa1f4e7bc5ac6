"""Starting a stage's training step on its ranks, and telling the stage how it went.

`run_on_ranks` writes the job (its kind and pickled inputs) to a folder, starts torchrun's agent
for each node (all on this machine with `agents: local`; node 0's only with `agents: external`,
the others joining from `flywheel rank-agent` on their own machines), waits, and returns what
rank 0 wrote. The rendezvous is torchrun's c10d one on node 0's endpoint. Every rank's stdout and
stderr are kept under the job's `logs/`; rank 0's also reach this process's console. A failed
rank fails the call with `RankFailed`: that rank's error and the tail of its log. Nothing is
left half-done: the agents take down every rank when one fails, and the stage writes the lake
only from a finished job's `out/`, so a retry starts all ranks again from the inputs.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flywheel.config.resources import RDZV_ENV, ResourcesConfig
from flywheel.errors import FlywheelError
from flywheel.training import report_step

RESULT = "result.json"  # rank 0's record in out/, written last (worker.py)
TAIL_LINES = 40


class RankFailed(FlywheelError):
    """A rank of a training job failed: which, its error, and the end of its log."""


@dataclass
class Job:
    dir: Path
    kind: str
    nodes: int
    ranks_per_node: int
    endpoint: str

    @property
    def out(self) -> Path:
        return self.dir / "out"

    def agent_command(self, node: int) -> list[str]:
        """torchrun's agent for `node`: its ranks, the rendezvous, and where their logs go
        (rank 0's also to the console)."""
        console = ["-t", "3", "--local-ranks-filter", "0"] if node == 0 else ["-r", "3"]
        return [
            sys.executable, "-m", "torch.distributed.run",
            "--nnodes", str(self.nodes), "--nproc-per-node", str(self.ranks_per_node),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", self.endpoint,
            "--rdzv-id", self.dir.name, "--rdzv-conf", f"is_host={int(node == 0)}",
            "--max-restarts", "0", "--log-dir", str(self.dir / "logs" / f"node{node}"),
            *console, "-m", "flywheel.distributed.worker", str(self.dir),
        ]


def read_job(job_dir: Path) -> Job:
    spec = json.loads((job_dir / "job.json").read_text())
    return Job(job_dir, spec["kind"], spec["nodes"], spec["ranks_per_node"], spec["endpoint"])


def serve_node(job_root: str | Path, node: int, once: bool = False, poll_s: float = 1.0,
               idle_timeout_s: float | None = None) -> int:
    """A node other than node 0 (`agents: external`): watch `job_root`, a folder every node
    mounts, and join each training job that spans more than `node` nodes and that this node has
    not joined yet, by running its launcher agent here (`flywheel rank-agent`; the infra/k8s
    multi-node template runs it on every pod but the first). Returns the number of jobs joined:
    after the first with `once`, or when no new job came for `idle_timeout_s` seconds (None:
    serve until stopped). A failed job is reported by node 0's stage, not here: the agent
    goes on to the next."""
    if node < 1:
        raise FlywheelError("node 0's agent is started by the stage itself; rank-agent serves "
                            "nodes 1 and up")
    root = Path(job_root)
    joined, idle_since = 0, time.monotonic()
    while True:
        for job_dir in sorted(root.glob("*/job.json"), key=lambda p: p.stat().st_mtime):
            job = read_job(job_dir.parent)
            if job.nodes <= node or (job.dir / "logs" / f"agent{node}.log").exists():
                continue
            if (job.out / RESULT).exists():
                continue  # finished without this node (it was not needed): nothing to join
            (job.dir / "logs").mkdir(exist_ok=True)
            print(f"rank-agent node {node}: joining {job.kind} ({job.dir})", file=sys.stderr,
                  flush=True)
            for _, p in start_agents(job, range(node, node + 1)):
                p.wait()
            joined, idle_since = joined + 1, time.monotonic()
            if once:
                return joined
        if idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s:
            return joined
        time.sleep(poll_s)


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def write_job(kind: str, inputs: dict, res: ResourcesConfig, root: Path,
              timeout_s: int = 1800) -> Job:
    nodes, ranks = res.plan()
    endpoint = res.rdzv_endpoint or os.environ.get(RDZV_ENV) or ""
    if not endpoint:
        if res.agents == "external":
            raise FlywheelError(f"{kind}: agents: external needs rdzv_endpoint (node 0's "
                                f"host:port, reachable from every node) or ${RDZV_ENV}")
        endpoint = _free_endpoint()
    job_dir = root / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    (job_dir / "logs").mkdir(parents=True)
    (job_dir / "inputs.pkl").write_bytes(pickle.dumps(inputs))
    spec = {"kind": kind, "nodes": nodes, "ranks_per_node": ranks, "endpoint": endpoint,
            "timeout_s": timeout_s}
    (job_dir / "job.json").write_text(json.dumps(spec))  # last: rank agents wait for it
    return Job(job_dir, kind, nodes, ranks, endpoint)


def start_agents(job: Job, nodes: range) -> list[tuple[int, subprocess.Popen]]:
    procs = []
    for node in nodes:
        log = open(job.dir / "logs" / f"agent{node}.log", "wb")  # noqa: SIM115 (kept by Popen)
        # node 0's agent tees rank 0 to this console; its own summary goes to its log
        procs.append((node, subprocess.Popen(
            job.agent_command(node), stdout=None if node == 0 else log, stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})))
    return procs


PROGRESS = "progress.json"  # rank 0's last optimizer step (worker.py), relayed by `wait`


def wait(job: Job, procs: list[tuple[int, subprocess.Popen]], poll_s: float = 0.5) -> dict:
    """Wait for every agent, passing rank 0's progress on to this process's `report_step`
    listener (the stage's Prefect progress artifact); rank 0's result, or RankFailed naming
    the failed rank."""
    seen = None
    while True:
        try:
            progress = (job.dir / PROGRESS).read_text()
        except OSError:
            progress = None
        if progress and progress != seen:
            seen = progress
            report_step(*json.loads(progress))
        if all(p.poll() is not None for _, p in procs):
            break
        time.sleep(poll_s)
    codes = {node: p.returncode for node, p in procs}
    if all(c == 0 for c in codes.values()) and (job.out / RESULT).is_file():
        return json.loads((job.out / RESULT).read_text())
    raise RankFailed(failure_report(job, codes))


def failure_report(job: Job, codes: dict[int, int]) -> str:
    """The first failed rank's error and log tail, from the agents' summaries (torchrun's
    "Failures" and "Root Cause" entries) and the error file the failed rank wrote (worker.py's
    `record`). A rank killed by a signal can be listed under "Failures" while its peer, whose
    collective broke and which the agent then stopped, is named the root cause."""
    causes = []
    for node, code in sorted(codes.items()):
        text = _read(job.dir / "logs" / f"agent{node}.log")
        start = min((i for i in (text.find("Failures:"), text.find("Root Cause")) if i >= 0),
                    default=len(text))
        for m in re.finditer(r"time\s*:\s*(\S+).*?rank\s*:\s*(\d+) \(local_rank: (\d+)\).*?"
                             r"exitcode\s*:\s*(-?\d+).*?error_file:\s*(\S+)", text[start:], re.S):
            causes.append((m[1], node, int(m[2]), int(m[3]), int(m[4]), m[5]))
    lines = [f"{job.kind} on {job.nodes * job.ranks_per_node} rank(s) "
             f"({job.nodes} node(s) x {job.ranks_per_node}) failed; agents' exit codes "
             f"{codes}; logs in {job.dir / 'logs'}"]
    if not causes:
        tail = "\n".join(_read(job.dir / "logs" / "agent0.log").splitlines()[-TAIL_LINES:])
        return "\n".join(lines + ["no rank reported an error; node 0's agent said:", tail])
    # a rank the agent stopped because another failed exits by SIGTERM: not the cause
    _, node, rank, local, code, error_file = min(causes, key=lambda c: (c[4] == -15, c[0]))
    error = _error_message(error_file) or _signal_name(code)
    log = _rank_log(job, node, local)
    tail = "\n".join(_read(log).splitlines()[-TAIL_LINES:]) if log else "(no log)"
    return "\n".join(lines + [f"rank {rank} (node {node}, local rank {local}) failed: {error}",
                              f"last lines of its log ({log}):", tail])


def _error_message(path: str) -> str | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    msg = data.get("message", {})
    if isinstance(msg, dict):
        stack = msg.get("extraInfo", {}).get("py_callstack", "")
        return (msg.get("message", "") + ("\n" + stack if stack else "")).strip()
    return str(msg)


def _signal_name(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name} (exit code {code})"
        except ValueError:
            pass
    return f"exit code {code}"


def _rank_log(job: Job, node: int, local_rank: int) -> Path | None:
    found = sorted((job.dir / "logs" / f"node{node}").glob(f"*/attempt_*/{local_rank}/stderr.log"))
    return found[-1] if found else None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@contextmanager
def run_on_ranks(kind: str, inputs: dict, res: ResourcesConfig):
    """Run the training job `kind` (worker.JOBS) with `inputs` on the ranks `res` plans; yields
    (rank 0's result, the folder holding what it saved). A finished job's folder is removed
    once the caller is done with it (under `res.job_root` too, which would otherwise fill with
    weights); a failed job's stays, its logs named in the error."""
    root = Path(res.job_root) if res.job_root else Path(tempfile.mkdtemp(prefix="flywheel-job-"))
    job = write_job(kind, inputs, res, root)
    nodes = range(job.nodes) if res.agents == "local" else range(1)
    print(f"{kind}: {job.nodes * job.ranks_per_node} rank(s) on {job.nodes} node(s), "
          f"rendezvous {job.endpoint}, job {job.dir}", file=sys.stderr, flush=True)
    procs = start_agents(job, nodes)
    try:
        result = wait(job, procs)
    except BaseException:
        for _, p in procs:
            if p.poll() is None:
                p.terminate()
        raise
    try:
        yield result, job.out
    finally:
        shutil.rmtree(job.dir if res.job_root else root, ignore_errors=True)


def policy_on_ranks(kind: str, inputs: dict, res: ResourcesConfig, out_dir: str | Path) -> dict:
    """A policy-training job (`kind`: finetune, rrhf, ppo) on the ranks `res` plans: rank 0's
    saved policy (its out/policy) copied to `out_dir`; returns its metrics, each rank's record
    (peak memory, optimizer state, step time) under "ranks"."""
    with run_on_ranks(kind, inputs, res) as (result, out):
        shutil.copytree(out / "policy", out_dir, dirs_exist_ok=True)
    return {**result["metrics"], "ranks": result["ranks"]}
