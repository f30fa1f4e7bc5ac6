"""`flywheel rank-agent`: a node other than node 0 of a training stage that spans several nodes
(`resources.agents: external`) joins each of the stage's training jobs from the shared job folder
(flywheel/distributed/launch.py `serve_node`; infra/k8s/train-nodes-job-template.json runs it on
every pod but the first)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

from cyclopts import Parameter

from flywheel.errors import FlywheelError


def rank_agent(*,
               job_root: Annotated[str, Parameter(
                   help="the folder every node mounts, the stages' `resources.job_root`")],
               node_rank: Annotated[int, Parameter(
                   help="this node's index, 1 to nodes - 1 (node 0 is the stage's own)")],
               once: Annotated[bool, Parameter(
                   help="exit after the first job joined")] = False,
               idle_timeout: Annotated[float | None, Parameter(
                   help="exit when no new job came for this many seconds (default: serve "
                   "until stopped)")] = None,
               poll: Annotated[float, Parameter(
                   help="seconds between looks at the job folder")] = 1.0) -> int:
    """Join a stage's training jobs as node --node-rank of several.

    Watches --job-root for the job folders a stage writes (`<kind>-<time>-<id>/job.json`) and
    runs torchrun's agent for this node on each job that spans it; the ranks meet node 0's
    through the rendezvous the job names (`resources.rdzv_endpoint`). A failed job is reported
    by the stage on node 0; the agent goes on to the next one.

    Example: flywheel rank-agent --job-root /flywheel/jobs --node-rank 1
    """
    from flywheel.distributed.launch import serve_node

    if node_rank < 1:
        raise FlywheelError(f"--node-rank {node_rank}: node 0 is the stage's own node, whose "
                            "agent the stage starts itself; run rank-agent on the other nodes "
                            "with --node-rank 1 to nodes - 1")
    if not Path(job_root).is_dir():
        raise FlywheelError(f"no folder {job_root}: mount the folder the stages write their "
                            "jobs to (resources.job_root, shared by every node) and pass it as "
                            "--job-root")
    joined = serve_node(job_root, node_rank, once=once, poll_s=poll,
                        idle_timeout_s=idle_timeout)
    print(f"rank-agent node {node_rank}: joined {joined} job(s) from {job_root}",
          file=sys.stderr)
    return 0
